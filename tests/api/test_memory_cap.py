"""Out of memory for real: a job that needs more memory than the process may have fails with a message,
and the next job runs, under the same cap.

The cap is the kernel's (``RLIMIT_DATA``, the private memory a process may map), set in a child process after
the checkpoint is loaded and a first small job has run; the child drives Easel through the REST API in
process and prints what it saw as JSON. Nothing is simulated: the failing allocation is whichever of the
job's tensors first meets the cap.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 11, "prompt": "a red circle"}
# A 2048x2048 decode holds several 2048x2048 activations of the VAE's channels: far over the headroom below.
LARGE = {"width": 2048, "height": 2048, "steps": 1, "seed": 11, "prompt": "a red circle"}
HEADROOM = 384 * 1024 * 1024  # bytes of private memory the child may map beyond what it holds when capped


def _data_bytes() -> int:
    """This process's private data mappings (``VmData``), in bytes: what ``RLIMIT_DATA`` counts."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def child(data_dir: str) -> None:
    """Run in the child process: a small job, the cap, a job over it, the small job again."""
    import base64

    from fastapi.testclient import TestClient

    from webui.container import build_services
    from webui.server import build_app
    from webui.settings import Settings

    services = build_services(Settings(data_dir=Path(data_dir), preload_model=False, nowebui=True))
    seen: dict[str, object] = {}
    with TestClient(build_app(services)) as client:
        first = client.post("/sdapi/v1/txt2img", json=SMALL)
        assert first.status_code == 200, first.text
        capped = _data_bytes() + HEADROOM
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (capped, hard))
        seen["cap_mib"] = capped // (1024 * 1024)
        large = client.post("/sdapi/v1/txt2img", json=LARGE)
        seen["large_status"] = large.status_code
        seen["large_detail"] = large.json().get("detail", "") if large.status_code >= 400 else ""
        again = client.post("/sdapi/v1/txt2img", json=SMALL)
        seen["again_status"] = again.status_code
        seen["same_image"] = again.status_code == 200 and base64.b64decode(
            again.json()["images"][0]
        ) == base64.b64decode(first.json()["images"][0])
        seen["still_capped"] = resource.getrlimit(resource.RLIMIT_DATA)[0] == capped
    services.generation.shutdown()
    print("RESULT " + json.dumps(seen), flush=True)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc and RLIMIT_DATA")
def test_a_job_over_a_real_memory_cap_fails_with_a_message_and_the_next_job_runs(data_dir: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    code = f"from tests.api.test_memory_cap import child; child({str(data_dir)!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"the child failed ({done.returncode}):\n{done.stderr[-4000:]}"
    seen = json.loads(lines[-1].removeprefix("RESULT "))
    assert seen["still_capped"]
    assert seen["large_status"] >= 400, seen  # the job over the cap failed...
    detail = str(seen["large_detail"])
    assert detail.startswith("Out of memory."), seen  # ...saying what happened and what to do
    assert "batch size" in detail and "--medvram" in detail, seen
    assert seen["again_status"] == 200 and seen["same_image"], seen  # the next job runs, exactly as before
