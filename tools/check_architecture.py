#!/usr/bin/env python3
"""Checks the layering of the workspace; fails (exit 1) when

1. the modules of any crate under crates/ (or xtask/) import each other in a circle;
2. the kernel crate, nn-kernels, depends (outside its dev-dependencies) on a crate of ours;
3. a crate other than nn-kernels allows `unsafe` code (the workspace denies it), except
   the one audited block per binary that tunes the process's own allocator (`mallopt`):
   the binaries decide process settings, so that call cannot live in a library.

About 1:
A node is a module (a file under src/, `foo.rs` or `foo/mod.rs`); an edge A -> B is a
path in A's code that names B or something inside it (`crate::b::…`, `super::b::…`,
`self::b::…`, a `use` of them). The crate root (lib.rs / main.rs) is left out: it
declares and re-exports the modules, it does not depend on them. A child module naming
its parent by `super::Item` counts as an edge to the parent. Inline `mod tests` blocks
are skipped (a test may use anything). Circles are the strongly connected components
of more than one module (Tarjan).

Usage: python3 tools/check_architecture.py [ROOT]
"""

import re
import sys
from pathlib import Path


def module_path(src: Path, f: Path) -> tuple:
    rel = f.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts in (["lib"], ["main"]):
        return ()
    return tuple(parts)


def strip_tests_and_comments(text: str) -> str:
    # Drop `#[cfg(test)] mod tests { ... }` (to the end of the file: it is last by habit).
    text = re.split(r"#\[cfg\(test\)\]\s*mod \w+ \{", text)[0]
    # Drop comments (doc comments name paths in links; they are not dependencies).
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def referenced(text: str, me: tuple, modules: set) -> set:
    """Modules named by the paths in `text` of module `me`."""
    out = set()
    # Expand `use a::{b, c::d}` groups one level into paths.
    paths = []
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)*)(?:::\{([^}]*)\})?", text):
        base = m.group(1)
        if m.group(2):
            for item in m.group(2).split(","):
                item = item.strip().split(" as ")[0]
                if item:
                    paths.append(base + "::" + item)
        else:
            paths.append(base)
    for p in paths:
        segs = p.split("::")
        if segs[0] == "crate":
            cur = []
            segs = segs[1:]
        else:
            # `super::` and `self::` are relative to the file's module.
            cur = list(me)
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    if not cur:
                        break
                    cur.pop()
                segs = segs[1:]
        # the longest prefix that is a module
        best = tuple(cur)
        for s in segs:
            cand = tuple(cur + [s])
            if cand in modules:
                cur.append(s)
                best = cand
            else:
                break
        if best and best != me and not best[: len(me)] == me:
            out.add(best)
        elif best == () and segs == [] and cur == [] and me:
            pass
    return out


def sccs(graph: dict) -> list:
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    srcs = sorted(p for p in root.glob("crates/*/src")) + [root / "xtask/src"]
    bad = 0
    checked = 0
    for src in srcs:
        if not src.is_dir():
            continue
        files = {module_path(src, f): f for f in src.rglob("*.rs")}
        modules = set(files)
        graph = {}
        for me, f in files.items():
            if me == ():
                continue
            text = strip_tests_and_comments(f.read_text())
            graph[me] = {m for m in referenced(text, me, modules) if m != ()}
        checked += len(graph)
        for comp in sccs(graph):
            if len(comp) > 1:
                bad += 1
                names = ", ".join("::".join(m) for m in sorted(comp))
                print(f"{src.parent.name}: module circle: {names}")
    print(f"module circles: {bad} in {checked} modules of {len(srcs)} crates")
    bad += check_kernel_crate(root)
    bad += check_unsafe(root)
    return 1 if bad else 0


def check_kernel_crate(root: Path) -> int:
    """nn-kernels' [dependencies] and target dependencies name no crate of ours."""
    ours = {p.parent.name for p in root.glob("crates/*/Cargo.toml")}
    text = (root / "crates/nn-kernels/Cargo.toml").read_text()
    section, found = None, []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
            continue
        name = line.split("=")[0].strip().split(".")[0]
        if section and section.endswith("dependencies]") and "dev-dependencies" not in section:
            if name in ours:
                found.append(name)
    for name in found:
        print(f"nn-kernels depends on {name}, a crate of ours")
    print(f"nn-kernels: {len(found)} dependencies on crates of ours")
    return len(found)


# Binary files allowed one `#[allow(unsafe_code)]` block: their mallopt call.
PROCESS_TUNING = {
    "crates/yolo-cli/src/process.rs",
    "crates/yolov3-head/examples/bench_speed.rs",
}


def check_unsafe(root: Path) -> int:
    bad = 0
    for manifest in sorted(root.glob("crates/*/Cargo.toml")) + [root / "xtask/Cargo.toml"]:
        crate = manifest.parent
        if crate.name == "nn-kernels":
            continue
        allows = re.search(r'unsafe_code\s*=\s*"(allow|warn)"', manifest.read_text())
        files = [f for f in crate.rglob("*.rs") if "target" not in f.parts]
        hits = [
            f
            for f in files
            if re.search(r"allow\(unsafe_code\)", f.read_text())
            and not (f.relative_to(root).as_posix() in PROCESS_TUNING
                     and f.read_text().count("allow(unsafe_code)") == 1)
        ]
        if allows or hits:
            bad += 1
            print(f"{crate.name}: allows unsafe code ({manifest if allows else hits[0]})")
    print(f"unsafe outside nn-kernels: {bad} crates")
    return bad


if __name__ == "__main__":
    sys.exit(main())
