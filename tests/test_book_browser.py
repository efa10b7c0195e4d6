"""The smoke tier's built book in a real browser (issue 26): at a 1280×800 window, on every page, no
table or figure runs past its container, every image loads, the console stays clean, and every
figure is shown at least 600 px wide (or at its own width when it is smaller).

Drives Debian's system Chromium (``/usr/bin/chromium``, installed by .ci/run like Slurm) through
Playwright for Python, with no browser download. Reads the book of the session's one smoke run
(``smoke_study`` in tests/conftest.py); skips cleanly where Chromium or Playwright is missing.
Screenshots of the intro, the summary, the Claims page and an SLS result page go to
``{results}/book-shots/`` for a person to look at.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
LAUNCH_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
MIN_FIGURE_PX = 600
# Known upstream faults, not the report's: jupyter-book 1.0.4 registers sphinx-thebe twice, so every
# page declares `const THEBE_JS_URL` twice (an error even on a fresh build). Listed, not hidden: any
# other console or page error fails the test.
# pydata-sphinx-theme 0.17 logs "Got invalid theme mode" on a browser's first page (empty localStorage).
KNOWN_UPSTREAM = ("Identifier 'THEBE_JS_URL' has already been declared", "Got invalid theme mode: . Resetting to auto.")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no system Chromium at {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright is not installed"),
]

# Run in the page once every image has loaded: what a reader would see overflow or shrink.
CHECK_JS = """
async () => {
  for (const img of document.images) img.loading = "eager";
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(done => { img.addEventListener("load", done); img.addEventListener("error", done); })));
  const name = el => {
    const text = (el.closest(".cell_output, section")?.querySelector("h1, h2, h3, strong")?.textContent || "");
    return `${el.tagName.toLowerCase()}${el.className ? "." + String(el.className).split(" ")[0] : ""}` +
           (text ? ` near "${text.trim().slice(0, 60)}"` : "");
  };
  const problems = [];
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth + 1)
    problems.push(`the page scrolls sideways (${root.scrollWidth} > ${root.clientWidth} px)`);
  for (const table of document.querySelectorAll("article table, .bd-article table")) {
    if (table.scrollWidth > table.clientWidth + 1)
      problems.push(`${name(table)}: ${table.scrollWidth} px of content in ${table.clientWidth} px`);
    const box = table.getBoundingClientRect(), parent = table.parentElement.getBoundingClientRect();
    if (box.right > parent.right + 1) problems.push(`${name(table)}: runs ${Math.round(box.right - parent.right)} px past its container`);
  }
  for (const box of document.querySelectorAll(".cell_output, figure, .output")) {
    if (box.scrollWidth > box.clientWidth + 1)
      problems.push(`${name(box)}: ${box.scrollWidth} px of content in ${box.clientWidth} px`);
  }
  const figures = [];
  for (const img of document.querySelectorAll("article img, .bd-article img")) {
    const src = img.getAttribute("src") || "";
    if (!img.complete || img.naturalWidth === 0) { problems.push(`image ${src} did not load`); continue; }
    const shown = img.getBoundingClientRect().width, parent = img.parentElement.clientWidth;
    figures.push({src, shown, natural: img.naturalWidth});
    if (shown > parent + 1) problems.push(`image ${src}: ${Math.round(shown)} px in a ${parent}-px container`);
    if (shown + 1 < Math.min(%MIN%, img.naturalWidth))
      problems.push(`image ${src}: shown ${Math.round(shown)} px wide (natural ${img.naturalWidth} px; at least %MIN% px)`);
  }
  return {problems, figures, tables: document.querySelectorAll("article table, .bd-article table").length};
}
""".replace("%MIN%", str(MIN_FIGURE_PX))


def book_pages(html: Path) -> list[Path]:
    """Every page of the built book: not Sphinx's own _static/_sources/_images folders, nor a redirect
    stub (jupyter-book's index.html sends the reader on to the root page, checked on its own)."""
    return sorted(p for p in html.rglob("*.html")
                  if not any(part.startswith("_") for part in p.relative_to(html).parts)
                  and 'http-equiv="refresh"' not in p.read_text(errors="replace")[:2000].lower())


def results_dir(workdir: Path) -> Path:
    return workdir / yaml.safe_load((ROOT / "workflow/config/smoke.yaml").read_text())["results"]


def test_every_page_of_the_smoke_book_fits_at_1280px(smoke_study) -> None:
    from playwright.sync_api import sync_playwright

    workdir, run = smoke_study
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    html = workdir / "book/_build/html"
    pages = book_pages(html)
    assert len(pages) > 10, f"{html}: only {len(pages)} pages"
    shots = results_dir(workdir) / "book-shots"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    sls_pages = sorted(html.glob("generated/results/*/*-sls.html"))  # {order}-{method}.html
    wanted = {"intro": html / "intro.html", "summary": html / "generated/summary.html",
              "claims": html / "generated/claims.html", "sls-result": sls_pages[0] if sls_pages else None}
    assert all(wanted.values()), f"pages to photograph are missing: {wanted}"

    failures: dict[str, list[str]] = {}
    checked = n_figures = n_tables = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error" and not any(k in msg.text for k in KNOWN_UPSTREAM) else None)
        page.on("pageerror", lambda exc: None if any(k in str(exc) for k in KNOWN_UPSTREAM)
                else errors.append(f"page error: {exc}"))
        page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url} ({req.failure})"))
        for path in pages:
            errors.clear()
            page.goto(path.as_uri(), wait_until="load")
            result = page.evaluate(CHECK_JS)
            problems = result["problems"] + list(errors)
            if problems:
                failures[str(path.relative_to(html))] = problems
            checked += 1
            n_figures += len(result["figures"])
            n_tables += result["tables"]
        for name, path in wanted.items():
            page.goto(path.as_uri(), wait_until="load")
            page.evaluate(CHECK_JS)  # every image loaded before the picture
            if name == "claims":  # the first claim's table with its numbers (else its heading), not the preamble
                page.evaluate("""() => (document.querySelector('.bd-article table')?.closest('section')
                                        || document.querySelectorAll('.bd-article h2')[0])?.scrollIntoView()""")
            page.screenshot(path=str(shots / f"{name}.png"))
            if name in ("summary", "sls-result"):  # and the first figure, as it is drawn on the page
                page.evaluate("() => document.querySelector('.bd-article .cell_output img')?.scrollIntoView()")
                page.screenshot(path=str(shots / f"{name}-figure.png"))
        browser.close()
    print(f"browser check: {checked} pages, {n_tables} tables, {n_figures} figures; screenshots in {shots}")
    assert not failures, "\n".join(f"{page}:\n  " + "\n  ".join(p) for page, p in failures.items())
    assert n_figures > 0 and n_tables > 0
