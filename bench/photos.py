"""Photo benchmark: what normalisation saves, and attachment upload/download over loopback.

Run ``python -m bench.photos [--quick] [--runs N] [--dir DIR] [--json PATH] [--md PATH]``.

1. **A phone photo before and after normalisation.**  A realistic 4000x3000 JPEG at quality
   92 (shapes, gradients and sensor-like noise; 3-6 MB, with EXIF and GPS) is normalised with
   :func:`fieldsync.photos.normalise` (longest edge 1600, quality 80, no metadata) and with
   two other settings; the table gives the bytes a device stores and sends, the time, and the
   peak RSS growth of a fresh process doing it (``ru_maxrss``).
2. **Upload throughput.**  A real district server (``python -m uvicorn server_stub.asgi:app`` on
   127.0.0.1, SQLite database, attachments in a folder, fsync after every chunk) and an
   enrolled device (an encrypted :class:`fieldsync.Store`, :class:`RequestsTransport`):
   20 reports with a photo of about 400 KB each, then one report with a 30 MB file.  One
   ``client.sync()`` each; the upload is timed from the moment the client's status turns to
   ``uploading`` to the end of the sync, so the record push and pull are not in the rate.
   MB/s = attachment bytes / that time (1 MB = 10^6 bytes).  Every chunk is read from the
   encrypted store (decrypted on the fly) and sent as one 256 KiB ``PUT``.
3. **Download throughput**: a second device of the same grid downloads the 30 MB file
   (``SyncClient.download_attachment``, 1 MiB ranges, streaming into its encrypted store).

Each measurement runs ``--runs`` times (default 3; fresh server and devices each run) and the
median is reported with the range.  ``--quick`` uses 5 photos and a 10 MB file, one run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import PIL
import requests
from PIL import Image, ImageDraw, ImageFilter

from fieldsync import KdfParams, Store
from fieldsync.photos import normalise
from fieldsync.protocol import CHUNK_BYTES
from fieldsync.sync import SyncClient, SyncStatus, enroll
from fieldsync.transport import RequestsTransport
from server_stub.district import District
from server_stub.replica import Actor

from .procs import free_port, proc_cpu
from .store import machine

MB = 1_000_000
SERVER_START_TIMEOUT_S = 20.0


# -- photos --------------------------------------------------------------------------------

def phone_photo(seed: int = 1, size: tuple[int, int] = (4000, 3000), quality: int = 92) -> bytes:
    """A JPEG like a phone's: a scene of shapes and gradients, fine texture and sensor noise, EXIF+GPS."""
    rng = random.Random(seed)
    w, h = size
    sky = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    img = Image.blend(Image.new("RGB", size, (90, 120, 170)), sky, 0.35)
    draw = ImageDraw.Draw(img)
    for _ in range(120):  # walls, windows, posters, a bicycle's wheels
        x, y = rng.randrange(w), rng.randrange(h)
        box = (x, y, x + rng.randrange(40, 900), y + rng.randrange(40, 700))
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice((draw.rectangle, draw.ellipse))
        shape(box, fill=colour, outline=tuple(c // 2 for c in colour), width=rng.randrange(1, 12))
    for _ in range(400):
        draw.line([(rng.randrange(w), rng.randrange(h)) for _ in range(2)], fill=tuple(rng.randrange(256)
                  for _ in range(3)), width=rng.randrange(1, 4))
    img = img.filter(ImageFilter.GaussianBlur(1.2))  # a real lens is not pixel-sharp
    texture = Image.merge("RGB", [Image.effect_noise((w // 2, h // 2), 48).resize(size) for _ in range(3)])
    img = Image.blend(img, texture, 0.10)
    grain = Image.frombytes("RGB", size, rng.randbytes(w * h * 3))
    img = Image.blend(img, grain, 0.06)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Xiaomi", "Redmi Note 12"
    exif[0x8825] = {1: "N", 2: (30.0, 33.0, 12.5), 3: "E", 4: (114.0, 18.0, 5.0)}
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, exif=exif.tobytes())
    return out.getvalue()


def photo_of_about(n_bytes: int, seed: int) -> bytes:
    """A normalised-looking photo (1600x1200 JPEG) of roughly ``n_bytes``."""
    rng = random.Random(seed)
    size = (1600, 1200)
    base = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(base)
    for _ in range(60):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        draw.rectangle((x, y, x + rng.randrange(30, 400), y + rng.randrange(30, 300)),
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    noise = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    best = b""
    for alpha in (0.05, 0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5):
        out = io.BytesIO()
        Image.blend(base, noise, alpha).save(out, "JPEG", quality=85)
        best = out.getvalue()
        if len(best) >= n_bytes:
            break
    return best


MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    from fieldsync.photos import normalise
    from PIL import Image, JpegImagePlugin
    if sys.argv[4:] == ["no-draft"]:  # for comparison: what decoding at full resolution costs
        JpegImagePlugin.JpegImageFile.draft = lambda self, mode, size: None
    Image.open(sys.argv[1]).close()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    out = normalise(sys.argv[1], max_edge=int(sys.argv[2]), quality=int(sys.argv[3]))
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"bytes": len(out), "seconds": seconds, "rss_growth_kb": after - before}))
""")


def _measure(path: Path, max_edge: int, quality: int, *extra: str) -> dict[str, Any]:
    # A forking shell: Linux carries ru_maxrss over fork+exec from this (large) process.
    done = subprocess.run(["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-c", MEASURE, str(path),
                           str(max_edge), str(quality), *extra], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


GENERATE_20MB = textwrap.dedent("""
    import sys
    from PIL import Image
    tile = Image.merge("RGB", [Image.effect_noise((1000, 1000), 12) for _ in range(3)])
    img = Image.new("RGB", (6000, 8000))
    for x in range(0, 6000, 1000):
        for y in range(0, 8000, 1000):
            img.paste(tile, (x, y))
    img.save(sys.argv[1], "JPEG", quality=92)
""")


def big_photo_memory(where: Path, runs: int) -> dict[str, Any]:
    """Peak RSS growth normalising a 20 MB 6000x8000 JPEG, with draft decoding and without."""
    path = where / "IMG_6000x8000.jpg"
    subprocess.run([sys.executable, "-c", GENERATE_20MB, str(path)], check=True)
    draft = [_measure(path, 1600, 80) for _ in range(runs)]
    full = [_measure(path, 1600, 80, "no-draft") for _ in range(runs)]
    return {"input_bytes": path.stat().st_size, "output_bytes": draft[0]["bytes"],
            "draft_rss_mb": statistics.median(d["rss_growth_kb"] for d in draft) / 1024,
            "draft_seconds": statistics.median(d["seconds"] for d in draft),
            "full_rss_mb": statistics.median(d["rss_growth_kb"] for d in full) / 1024,
            "full_seconds": statistics.median(d["seconds"] for d in full)}


def normalisation(where: Path, runs: int) -> dict[str, Any]:
    photo = phone_photo()
    path = where / "IMG_20261128_093012.jpg"
    path.write_bytes(photo)
    with Image.open(io.BytesIO(photo)) as img:
        size = img.size
    rows = []
    for max_edge, quality in ((1600, 80), (1280, 75), (2048, 85)):
        got = [_measure(path, max_edge, quality) for _ in range(runs)]
        out = normalise(io.BytesIO(photo), max_edge=max_edge, quality=quality)
        with Image.open(io.BytesIO(out)) as img:
            out_size = img.size
        rows.append({"max_edge": max_edge, "quality": quality, "bytes": got[0]["bytes"], "size": list(out_size),
                     "ratio": len(photo) / got[0]["bytes"], "seconds": statistics.median(g["seconds"] for g in got),
                     "rss_growth_mb": statistics.median(g["rss_growth_kb"] for g in got) / 1024,
                     "default": (max_edge, quality) == (1600, 80)})
        assert len(out) == got[0]["bytes"]
    return {"input_bytes": len(photo), "input_size": list(size), "input_quality": 92, "settings": rows,
            "big": big_photo_memory(where, runs)}


# -- a district on loopback ------------------------------------------------------------------

@dataclass
class Loopback:
    district: District
    proc: subprocess.Popen[bytes]
    url: str
    folder: Path

    @classmethod
    def start(cls, folder: Path) -> "Loopback":
        folder.mkdir(parents=True)
        db_url = f"sqlite:///{folder / 'district.db'}"
        env = {**os.environ, "FIELDSYNC_DB": db_url, "FIELDSYNC_ATTACHMENTS": str(folder / "attachments")}
        os.environ["FIELDSYNC_ATTACHMENTS"] = env["FIELDSYNC_ATTACHMENTS"]
        district = District(db_url)
        district.add_worker("w1", "李璟")
        district.add_worker("w2", "小张")
        district.assign("w1", "g1")
        district.assign("w2", "g1")
        district.write_many(Actor("admin", "command"), "grids", [{"id": "g1", "name": "花园山1网格"}])
        port = free_port()
        with open(folder / "uvicorn.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "server_stub.asgi:app", "--host", "127.0.0.1",
                                     "--port", str(port), "--log-level", "warning"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=log)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError((folder / "uvicorn.log").read_text())
            try:
                if requests.get(f"{url}/v1/hello", timeout=1).status_code == 200:
                    return cls(district, proc, url, folder)
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)

    def device(self, worker: str, name: str) -> tuple[Store, SyncClient]:
        store = Store.create(self.folder / f"{name}.fsdb", "2580", kdf=KdfParams(n=2**14))
        code, _ = self.district.issue_code(worker)
        transport = RequestsTransport(self.url)
        enroll(store, self.url, code, transport=transport)
        return store, SyncClient(store, transport)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.district.close()


def _report(store: Store, data: bytes, n: int) -> str:
    h = store.attachments.add(io.BytesIO(data)).hash
    store.put("reports", {"grid_id": "g1", "category": "违规张贴广告", "description": f"小广告 {n}",
                          "attachments": [h], "status": "submitted", "reporter_id": "w1"})
    return h


def timed_upload(client: SyncClient, server_pid: int, expect_bytes: int) -> dict[str, Any]:
    marks: dict[str, float] = {}

    def watch(status: SyncStatus) -> None:
        if status.phase == "uploading" and "upload" not in marks:
            marks.update(upload=time.perf_counter(), cpu=time.process_time(), server=proc_cpu(server_pid))

    client.on_status = watch
    result = client.sync()
    end, cpu, server = time.perf_counter(), time.process_time(), proc_cpu(server_pid)
    client.on_status = None
    up = result.uploads
    assert up is not None and up.error is None and up.pending == 0, up
    assert up.bytes_sent == expect_bytes, (up.bytes_sent, expect_bytes)
    return _rates(up.bytes_sent, end - marks["upload"], cpu - marks["cpu"], server - marks["server"])


def _rates(n_bytes: int, seconds: float, client_cpu: float, server_cpu: float) -> dict[str, Any]:
    return {"bytes": n_bytes, "seconds": seconds, "mb_s": n_bytes / MB / seconds, "client_cpu_s": client_cpu,
            "server_cpu_s": server_cpu, "mb_per_cpu_s": n_bytes / MB / max(1e-9, client_cpu + server_cpu)}


def transfers(where: Path, runs: int, n_photos: int, big_mb: int) -> dict[str, Any]:
    photos = [photo_of_about(400_000, seed) for seed in range(n_photos)]
    big = random.Random(7).randbytes(big_mb * MB)
    small_runs, big_runs, down_runs = [], [], []
    for run in range(runs):
        server = Loopback.start(where / f"run{run}")
        try:
            store, client = server.device("w1", "tablet-a")
            client.sync()
            for n, p in enumerate(photos):
                _report(store, p, n)
            pid = server.proc.pid
            small = timed_upload(client, pid, sum(len(p) for p in photos))
            small["puts"] = sum(-(-len(p) // CHUNK_BYTES) for p in photos)
            small_runs.append(small)
            h = _report(store, big, 99)
            large = timed_upload(client, pid, len(big))
            large["puts"] = -(-len(big) // CHUNK_BYTES)
            big_runs.append(large)

            other, other_client = server.device("w2", "tablet-b")
            other_client.sync()
            other.attachments.cache_limit_bytes = 10 * big_mb * MB
            t, cpu, server_cpu = time.perf_counter(), time.process_time(), proc_cpu(pid)
            other_client.download_attachment(h)
            down = _rates(len(big), time.perf_counter() - t, time.process_time() - cpu, proc_cpu(pid) - server_cpu)
            assert other.attachments.size(h) == len(big)
            down_runs.append({**down, "gets": -(-len(big) // (1024 * 1024))})
            for s in (store, other):
                s.close()
        finally:
            server.stop()

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        rates = [r["mb_s"] for r in rows]
        return {**rows[0], "mb_s": statistics.median(rates), "mb_s_min": min(rates), "mb_s_max": max(rates),
                "seconds": statistics.median(r["seconds"] for r in rows), "runs": len(rows),
                "mb_per_cpu_s": statistics.median(r["mb_per_cpu_s"] for r in rows),
                "client_cpu_s": statistics.median(r["client_cpu_s"] for r in rows),
                "server_cpu_s": statistics.median(r["server_cpu_s"] for r in rows)}

    return {"photos": {"count": n_photos, "avg_bytes": sum(map(len, photos)) // n_photos, **summary(small_runs)},
            "big_file": {"megabytes": big_mb, **summary(big_runs)},
            "download": {"megabytes": big_mb, **summary(down_runs)}}


# -- report ------------------------------------------------------------------------------------

def markdown(result: dict[str, Any]) -> str:
    m, n, t = result["machine"], result["normalise"], result["transfer"]
    load = result["load"]
    lines = ["## Photos", "",
             f"Measured {result['when']} with `{result['command']}` "
             f"({m['cpu']}, {m['cores_usable']} usable cores, {m['platform']}, Python {m['python']}, "
             f"Pillow {result['pillow']}, files on {m['filesystem']}). Load average "
             f"{load[0]:.1f} before and {load[1]:.1f} after: on a shared machine the wall times are noisy; "
             "the CPU columns are steadier.", "",
             "### A phone photo, before and after normalisation", "",
             f"Input: a generated {n['input_size'][0]}x{n['input_size'][1]} JPEG at quality {n['input_quality']} "
             f"(shapes, gradients, texture and sensor-like noise; EXIF with GPS): "
             f"**{n['input_bytes'] / MB:.2f} MB**.", "",
             "| setting | output | bytes stored and sent | smaller by | time | peak RSS growth |",
             "|---|---|---|---|---|---|"]
    for r in n["settings"]:
        name = f"max_edge {r['max_edge']}, quality {r['quality']}" + (" (default)" if r["default"] else "")
        lines.append(f"| {name} | {r['size'][0]}x{r['size'][1]} | {r['bytes'] / 1000:.0f} KB | {r['ratio']:.1f}x | "
                     f"{r['seconds'] * 1000:.0f} ms | {r['rss_growth_mb']:.0f} MB |")
    big = n["big"]
    lines += ["", f"Memory: normalising a {big['input_bytes'] / MB:.1f} MB 6000x8000 JPEG (noise, quality 92) to "
              f"{big['output_bytes'] / 1000:.0f} KB grows a fresh process's peak RSS by **{big['draft_rss_mb']:.0f} MB** "
              f"in {big['draft_seconds']:.2f} s: libjpeg decodes it at 1/4 scale (`Image.draft`). Decoding it at "
              f"full resolution instead (draft disabled, for comparison) costs {big['full_rss_mb']:.0f} MB "
              f"and {big['full_seconds']:.2f} s. (`tests/test_photos.py` asserts < 150 MB, and measures "
              "tracemalloc too.)"]
    p, b, d = t["photos"], t["big_file"], t["download"]
    lines += ["", "### Upload and download over loopback", "",
              "A real uvicorn server on 127.0.0.1 (SQLite, attachments in a folder, fsync after every chunk); the "
              "device reads each chunk from its encrypted store. Median of "
              f"{p['runs']} run(s), range in brackets; 1 MB = 10^6 bytes.", "",
              "| what | bytes | requests | time | throughput | client + server CPU | MB per CPU-second |",
              "|---|---|---|---|---|---|---|"]
    rows = ((f"upload: {p['count']} photos of ~{p['avg_bytes'] / 1000:.0f} KB", p, f"{p['puts']} PUT + status"),
            (f"upload: one {b['megabytes']} MB file", b, f"{b['puts']} PUT + status"),
            (f"download on demand: the {d['megabytes']} MB file", d, f"{d['gets']} GET"))
    for what, r, requests_ in rows:
        lines.append(f"| {what} | {r['bytes'] / MB:.1f} MB | {requests_} | {r['seconds']:.2f} s | "
                     f"**{r['mb_s']:.1f} MB/s** [{r['mb_s_min']:.1f}–{r['mb_s_max']:.1f}] | "
                     f"{r['client_cpu_s']:.2f} + {r['server_cpu_s']:.2f} s | {r['mb_per_cpu_s']:.1f} |")
    lines += [
              "", "Upload time runs from the client's status turning to `uploading` (after the record push and "
              "pull) to the end of the sync, so it includes the `/v1/attachments/status` request. Uploads use "
              "far less CPU than wall time: the server fsyncs every 256 KiB chunk before it answers, and the "
              "client sends one chunk at a time; a download reads a completed file in 1 MiB ranges. "
              "Loopback has no latency: on a tablet's mobile link the 256 KiB chunks are bounded by the "
              "link, and a normalised photo is one or two of them.", ""]
    return "\n".join(lines)


def run(quick: bool = False, runs: int = 3, where_dir: Path | None = None) -> dict[str, Any]:
    """Both measurements as plain data, with the suite's ``table`` rows."""
    runs = 1 if quick else runs
    with tempfile.TemporaryDirectory(prefix="fieldsync-photos-", dir=where_dir) as tmp:
        where = Path(tmp)
        result: dict[str, Any] = {
            "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m bench.photos" + (" --quick" if quick else f" --runs {runs}"),
            "machine": machine(where),
            "pillow": PIL.__version__,
            "load": [os.getloadavg()[0]],
            "normalise": normalisation(where, runs),
            "transfer": transfers(where, runs, 5 if quick else 20, 10 if quick else 30),
        }
        result["load"].append(os.getloadavg()[0])
    result["table"] = table(result)
    return result


def table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the suite (``python -m bench``): metric, value, unit, baseline, ratio, goal, met."""
    n, t = result["normalise"], result["transfer"]
    default = next(r for r in n["settings"] if r["default"])
    rows: list[dict[str, Any]] = [
        {"metric": "phone photo after normalise() (default settings)", "value": round(default["bytes"] / 1000),
         "unit": "KB", "baseline": f"{n['input_bytes'] / MB:.2f} MB as taken", "ratio": default["ratio"],
         "goal": None, "met": None},
        {"metric": "normalise a 6000x8000 JPEG, peak RSS growth", "value": n["big"]["draft_rss_mb"], "unit": "MB",
         "baseline": f"{n['big']['full_rss_mb']:.0f} MB decoding at full size", "ratio": None,
         "goal": "< 150 MB (tests/test_photos.py)", "met": n["big"]["draft_rss_mb"] < 150},
    ]
    for key, label in (("photos", "upload, photos of ~400 KB"), ("big_file", "upload, one big file"),
                       ("download", "download on demand, the big file")):
        r = t[key]
        rows.append({"metric": label, "value": round(r["mb_s"], 2), "unit": "MB/s",
                     "baseline": f"range {r['mb_s_min']:.1f}-{r['mb_s_max']:.1f} over {r['runs']} run(s)",
                     "ratio": None, "goal": None, "met": None})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 photos, a 10 MB file, one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary files go")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None, help="write the '## Photos' section here")
    args = parser.parse_args(argv)
    result = run(args.quick, args.runs, args.dir)
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    if args.md:
        args.md.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
