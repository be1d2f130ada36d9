"""``r1hpc report``: the HTML page shows every plot in a real headless browser (Debian's
chromium) with no console errors and no network requests, and each PNG decodes to a non-empty image.

The run directory is what a run writes: metrics through MetricsLogger and the monitor's files,
from the monitor observing constructed batches for 12 steps (entropy collapsing mid-run so an
alarm fires)."""
import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image  # matplotlib's own image dependency

from r1hpc.cli import main
from r1hpc.monitor.metrics import MetricsLogger
from r1hpc.monitor.monitor import Monitor, MonitorConfig
from r1hpc.monitor.report import CURVES
from tests.monitor.batches import batch, tokenizer
from tests.monitor.browser import chromium_path, load_page

PLOTS = [stem for stem, *_ in CURVES if stem != "attention"] + ["entropy_trajectories"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "demo"
    tok = tokenizer()
    monitor = Monitor(MonitorConfig(examples_every=4, attention_every=0), tok, None, run, writer=True,
                      say=lambda *a: None)
    logger = MetricsLogger(run, tensorboard=False)
    for step in range(1, 13):
        samples, scores, problems = batch(tok, {0: 5, 1: 5})
        for s in samples:
            s.entropies *= 1.0 if step < 8 else 0.05  # collapse from step 8
        metrics = {"reward/mean": 0.5 + 0.02 * step, "reward/accuracy": 0.4 + 0.02 * step, "reward/format": 0.9,
                   "response_length/mean": 20.0 + step, "response_length/max": 40.0, "timing/step_s": 2.0,
                   "sampling/sampling_logp_difference/mean": 0.01 / step, "rollout_corr/router_agreement": 0.9}
        metrics.update(monitor.observe(step, samples, scores, problems, metrics))
        logger.log(step, metrics)
    logger.log(12, {"eval/pass@1": 0.5})
    logger.close()
    return run


def _decode_png(data: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.size


def test_report_writes_every_plot_as_png_and_inline(run_dir):
    assert main(["report", str(run_dir)]) == 0
    out = run_dir / "report"
    html = (out / "index.html").read_text()
    for stem in PLOTS:
        w, h = _decode_png((out / f"{stem}.png").read_bytes())
        assert w > 100 and h > 100, stem
        m = re.search(rf"id='plot-{stem}' alt='[^']*' src='data:image/png;base64,([^']+)'", html)
        assert m and base64.b64decode(m.group(1)) == (out / f"{stem}.png").read_bytes(), stem
    assert "entropy collapse" in html and "8&ndash;12" in html  # the alarm and its steps
    assert "67 &rarr; 68" in html  # the aha event's answer change
    assert "Monitor overhead:" in html
    assert "http://" not in html and "https://" not in html


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (scripts/install_system_deps.sh)")
def test_report_renders_in_headless_chromium(run_dir):
    assert main(["report", str(run_dir)]) == 0
    page = load_page(run_dir / "report" / "index.html")
    assert page["title"] == "r1hpc report: demo"
    shown = {i["id"]: i for i in page["images"]}
    assert sorted(shown) == sorted(f"plot-{s}" for s in PLOTS)
    for img in shown.values():
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img
    assert page["console_errors"] == [] and page["exceptions"] == [] and page["requests"] == []


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (scripts/install_system_deps.sh)")
def test_browser_check_catches_a_broken_page(tmp_path):
    """The browser check itself can fail: a missing image, a script error and a fetch are reported."""
    page_path = tmp_path / "bad.html"
    page_path.write_text("<html><body><img id='x' src='missing.png'><script>console.error('bad');"
                         "undefinedCall();</script><img src='http://127.0.0.1:9/x.png'></body></html>")
    page = load_page(page_path)
    assert page["images"][0]["width"] == 0
    assert page["console_errors"] and page["exceptions"]
    assert page["requests"] == ["http://127.0.0.1:9/x.png"]


def test_report_names_a_bad_line_and_a_missing_run(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    good = (run_dir / "metrics.jsonl").read_text().splitlines()
    (broken / "metrics.jsonl").write_text("\n".join(good[:3]) + '\n{"step": 4, "reward/me\n')
    assert main(["report", str(broken)]) == 0
    assert f"{broken / 'metrics.jsonl'}:4: not JSON" in capsys.readouterr().err
    assert "line skipped" in (broken / "report" / "index.html").read_text()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
