"""Build hooks of the documentation site (`mkdocs build`; see `mkdocs.yml`).

Three things the Markdown sources cannot do alone:

- **Equations.** `pymdownx.arithmatex` marks `$...$` and `$$...$$` (in pages, docstrings and
  notebooks); these hooks turn each into MathML with `latex2mathml`, which browsers render
  natively: no MathJax, no web fonts, nothing fetched when a page is viewed, so the site
  works offline and from the file system.
- **Notebooks.** Every jupytext notebook in `notebooks/` is executed at small size
  (`PARTICLES_SIZE=small`, as the test suite runs them) and rendered as a page with its
  outputs (`PARTICLES_DOCS_EXECUTE=0` renders them unexecuted, for a quick look while
  writing pages; CI always executes them).
- **Gallery.** Every experiment's figures and animation, from `--quick` runs made during the
  build, or from the runs in `$PARTICLES_GALLERY_RUNS/NAME` when that is set (CI reuses the
  runs it has just made).

- **Offline search.** Material's `offline` plugin makes search work from `file://` with the
  `iframe-worker` shim, which it would load from a CDN at view time; the shim is taken from
  the npm registry at build time instead (pinned, `npm pack`) and served with the site.

Everything generated lives in a temporary folder for the duration of the build; nothing is
written into the checkout.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))
MEDIA = (".png", ".mp4", ".gif")
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)

# the shim the offline plugin would otherwise fetch from unpkg.com in every reader's browser
SHIM = "iframe-worker@1.0.4"
SHIM_URI = "assets/javascripts/iframe-worker-shim.js"

_work: Path | None = None


def _title(path: Path) -> str:
    """A notebook's title: its first Markdown heading."""
    for line in path.read_text().splitlines():
        if line.startswith("# #"):
            return line.lstrip("# ").strip()
    return path.stem


def on_config(config):
    global _work
    _work = Path(tempfile.mkdtemp(prefix="particles-docs-"))
    # a polyfill naming iframe-worker keeps the offline plugin from adding its CDN address
    config.extra["polyfills"] = [SHIM_URI]
    pages = [{"Overview": "notebooks/index.md"}]
    pages += [{_title(p): f"notebooks/{p.stem}.md"} for p in NOTEBOOKS]
    config["nav"] = [
        {"Notebooks": pages} if isinstance(item, dict) and "Notebooks" in item else item
        for item in config["nav"]
    ]
    return config


def _mathml(match: re.Match, display: str) -> str:
    import latex2mathml.converter

    tex = html.unescape(match.group(1)).strip()
    return latex2mathml.converter.convert(tex, display=display)


def on_page_content(content, page, config, files):
    content = _BLOCK.sub(lambda m: _mathml(m, "block"), content)
    return _INLINE.sub(lambda m: _mathml(m, "inline"), content)


def _add(files, config, uri: str, path: Path | None = None, content: str | None = None):
    if path is not None:
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    else:
        files.append(File.generated(config, uri, content=content))


def _native_kernel():
    """A manager of the `python3` kernel of the interpreter running the build (this
    environment, with the project installed), whatever kernelspecs the machine has."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    specs = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _execute(path: Path, out: Path) -> tuple[str, dict[str, bytes]]:
    """Run notebook `path` at small size from a scratch folder; its Markdown and outputs."""
    import jupytext
    import nbconvert
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    if os.environ.get("PARTICLES_DOCS_EXECUTE", "1") == "0":
        # a quick look at the site's layout while writing it; CI always executes
        body, resources = nbconvert.MarkdownExporter().from_notebook_node(notebook)
        return body, {}
    scratch = out / f"run-{path.stem}"
    scratch.mkdir()
    env = {
        "PARTICLES_SIZE": "small",
        "PARTICLES_RUNS": str(scratch / "runs"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = NotebookClient(
            notebook,
            km=_native_kernel(),
            timeout=600,
            resources={"metadata": {"path": str(scratch)}},
        )
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    exporter = nbconvert.MarkdownExporter()
    body, resources = exporter.from_notebook_node(
        notebook, resources={"output_files_dir": f"{path.stem}_files"}
    )
    return body, resources.get("outputs", {})


def _notebooks(files, config, out: Path) -> None:
    listing = ["# Notebooks", ""]
    listing.append(
        "Each notebook is a jupytext script in `notebooks/`, executed here at the small size "
        "the test suite uses (`PARTICLES_SIZE=small`); run it yourself at full size with "
        "`jupyter lab notebooks/` (see [Getting started](../getting-started.md))."
    )
    listing.append("")
    for path in NOTEBOOKS:
        body, outputs = _execute(path, out)
        source = f"*Source: `notebooks/{path.name}`, executed at small size for this page.*"
        title, _, rest = body.lstrip().partition("\n")
        page = f"{title}\n\n{source}\n{rest}"
        _add(files, config, f"notebooks/{path.stem}.md", content=page)
        for name, data in outputs.items():
            target = out / "notebooks" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            _add(files, config, f"notebooks/{name}", path=target)
        listing.append(f"- [{_title(path)}]({path.stem}.md): `notebooks/{path.name}`")
    _add(files, config, "notebooks/index.md", content="\n".join(listing) + "\n")


def _run_quick(name: str, out: Path) -> Path:
    directory = out / "runs" / name
    directory.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    argv = [sys.executable, "-m", "sims", "run", name, "--quick", "--out", str(directory)]
    subprocess.run(argv, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return directory


def _gallery(files, config, out: Path) -> None:
    import sims

    given = os.environ.get("PARTICLES_GALLERY_RUNS")
    lines = [
        "# Gallery",
        "",
        "Every experiment's figures and animation, from a `--quick` run made when this site "
        "was built (small sizes: the shapes are right, the numbers rough; the guide pages "
        "give the numbers of full runs). Each is reproduced by the command under its name.",
        "",
    ]
    for name, experiment in sorted(sims.list_experiments().items()):
        directory = Path(given) / name if given else _run_quick(name, out)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"no run of {name!r} in {directory}")
        lines += [
            f"## {name}",
            "",
            experiment.summary,
            "",
            f"`python -m sims run {name} --quick`",
            "",
        ]
        media = sorted(p for p in directory.iterdir() if p.suffix in MEDIA)
        for p in media:
            uri = f"gallery/{name}/{p.name}"
            _add(files, config, uri, path=p)
            if p.suffix == ".mp4":
                lines.append(f'<video controls loop muted width="100%" src="{uri}"></video>')
            else:
                lines.append(f"![{name}: {p.stem}]({uri})")
            lines.append("")
    _add(files, config, "gallery.md", content="\n".join(lines) + "\n")


def _shim(files, config, out: Path) -> None:
    """The iframe-worker shim, from the npm registry."""
    try:
        subprocess.run(
            ["npm", "pack", SHIM, "--pack-destination", str(out)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"the offline search shim needs npm (npm pack {SHIM}): {e}") from e
    (tarball,) = out.glob("iframe-worker-*.tgz")
    with tarfile.open(tarball) as tar:
        data = tar.extractfile("package/shim/index.js").read()
    target = out / "iframe-worker-shim.js"
    target.write_bytes(data)
    _add(files, config, SHIM_URI, path=target)


def on_files(files, config):
    assert _work is not None
    _shim(files, config, _work)
    _notebooks(files, config, _work)
    _gallery(files, config, _work)
    return files


def on_post_build(config):
    global _work
    if _work is not None:
        shutil.rmtree(_work, ignore_errors=True)
        _work = None
