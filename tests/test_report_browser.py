"""The audit report in headless Chromium at 1400 px: every section visible, no element wider
than the viewport, every image loads, no console message, a non-blank screenshot, and a hostile
producer name renders as text (no script element in the page).

Chromium is driven directly (no WebDriver): a test-only page frames the report and writes what
it finds into its own DOM, which ``--dump-dom`` prints.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from engine.api import Model
from engine.audit import Options, audit, from_synth
from engine.audit.sections import SECTIONS

MODELS = Path(__file__).resolve().parents[1] / "models"
EVIL = "<script>alert(1)</script>"
BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="headless Chromium is not installed (Debian: apt-get install "
                                                        "chromium; .ci/run installs it before make test)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--mute-audio"]
PROBE = """<!DOCTYPE html><html><head><script>
function probe(frame) {  // runs at the frame's load event, when every image has loaded or failed
  const doc = frame.contentDocument;
  const images = Array.from(doc.images);
  const width = doc.documentElement.clientWidth;
  const describe = e => e.tagName + (e.className ? "." + e.className : "") + (e.alt ? "[" + e.alt + "]" : "");
  document.getElementById("result").textContent = JSON.stringify({
    images: images.length, failed: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    scripts: doc.querySelectorAll("script").length, text: doc.body.innerText,
    width: width, scroll_width: doc.documentElement.scrollWidth,
    wide: Array.from(doc.body.querySelectorAll("*")).filter(e => e.getBoundingClientRect().right > width + 0.5)
      .map(describe),
    sections: Array.from(doc.querySelectorAll("section")).map(s => [s.querySelector("h2").firstChild.textContent,
      s.getBoundingClientRect().height, getComputedStyle(s).visibility])});
}
</script></head><body><pre id="result">pending</pre>
<iframe src="index.html" width="1400" height="900" style="border:0" onload="probe(this)"></iframe>
</body></html>
"""


def chromium(*args, cwd=None):
    return subprocess.run([BROWSER, *FLAGS, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    proto = onnx.load(str(MODELS / "shapes-resnet-random.onnx"))
    proto.producer_name = EVIL
    onnx.save(proto, str(tmp / "evil.onnx"))
    model = Model(tmp / "evil.onnx", provider="CPUExecutionProvider", threads=1)
    options = Options(gallery=2, saliency_methods=("vanilla",), faithfulness=4,  # every CAM method: the widest grid
                      faithfulness_steps=2, classes=2,
                      classviz_steps=2, embed=16, queries=1, neighbours=3, dissect=16, channels=2, patches=3)
    path, _ = audit(model, from_synth(16, seed=4), tmp / "out", options)
    return path


@pytest.fixture(scope="module")
def probed(page):
    """Chromium's run of the probe page over the report: its stderr log and what the probe found."""
    (page.parent / "probe.html").write_text(PROBE)
    done = chromium("--allow-file-access-from-files", "--enable-logging=stderr", "--v=0", "--dump-dom",
                    (page.parent / "probe.html").as_uri())
    found = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, flags=re.S)
    assert found and found.group(1) != "pending", done.stderr[-2000:]
    return done.stderr, json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


def test_every_image_loads_and_names_render_as_text(page, probed):
    _, result = probed
    assert result["images"] == page.read_text().count("<img ") > 10
    assert result["failed"] == []
    assert result["scripts"] == 0
    assert EVIL in result["text"]


def test_every_section_is_visible_and_nothing_is_wider_than_the_viewport(probed):
    _, result = probed
    assert result["width"] == 1400
    assert [title for title, _, _ in result["sections"]] == [title for title, _ in SECTIONS] + ["Timing"]
    assert all(height > 40 and visibility == "visible" for _, height, visibility in result["sections"])
    assert result["wide"] == [] and result["scroll_width"] <= result["width"]


def test_no_console_messages(probed):
    log, _ = probed
    assert [line for line in log.splitlines() if "CONSOLE" in line] == []


def test_screenshot_is_not_blank(page, tmp_path):
    shot = tmp_path / "shot.png"
    chromium("--window-size=1200,1600", f"--screenshot={shot}", page.as_uri(), cwd=tmp_path)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (1600, 1200)
    assert image.std() > 20
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 500
