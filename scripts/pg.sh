# Source me: start_pg starts a throwaway PostgreSQL 15 cluster and exports
# FIELDSYNC_TEST_PG; stop_pg stops it and removes its files.
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

start_pg() {
    if [ ! -x "$PG_BIN/initdb" ]; then
        echo "PostgreSQL binaries not found in $PG_BIN (apt-get install postgresql-15)" >&2
        return 1
    fi
    PG_DIR=$(mktemp -d /tmp/fieldsync-pg.XXXXXX)
    local run=()
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$PG_DIR"
        run=(runuser -u postgres --)
    fi
    "${run[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres --no-sync >"$PG_DIR/initdb.log" 2>&1
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "${run[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
        -o "-k $PG_DIR -p $port -c listen_addresses='' -c fsync=off -c max_connections=200" start >/dev/null
    "${run[@]}" "$PG_BIN/createdb" -h "$PG_DIR" -p "$port" -U postgres fieldsync_test
    export FIELDSYNC_TEST_PG="postgresql://postgres@/fieldsync_test?host=$PG_DIR&port=$port"
    export PG_DIR
    echo "PostgreSQL test cluster: $FIELDSYNC_TEST_PG"
}

stop_pg() {
    if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
        local run=()
        [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
        "${run[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
}
