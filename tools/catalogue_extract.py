"""Draft catalogue entries from Ollama's git history (a maintainer's tool, not shipped: the output is curated by hand).

Usage: python tools/catalogue_extract.py GIT_DIR [--ggml GGML_GIT_DIR] > draft.jsonl
       python tools/catalogue_extract.py GIT_DIR --source-files   (the table in launcher/generations.py)
Reads Go slog / log.Printf calls and the vendored GGML/llama.cpp log calls at the representative tags of each
release line, keeps the ones whose text bears on placement (keyword filter), and merges identical format strings.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

RELEASE_TAGS = {
    "0.1": ("v0.1.9", "v0.1.20", "v0.1.32", "v0.1.48"),
    "0.2-0.3": ("v0.2.0", "v0.2.8", "v0.3.0", "v0.3.14"),
    "0.4-0.5": ("v0.4.0", "v0.4.7", "v0.5.7", "v0.5.8", "v0.5.13"),
    "0.6-0.11": ("v0.6.0", "v0.6.8", "v0.11.11"),
    "0.12-0.24": ("v0.12.0", "v0.12.3", "v0.12.4", "v0.13.5", "v0.24.0"),
    "0.30+": ("v0.30.0", "v0.32.15", "v0.33.0-rc2"),
}
GO_DIRS = ("gpu", "discover", "llm", "server", "ml", "runner", "runners", "llama", "envconfig")
C_DIRS = ("llama", "ml/backend/ggml/ggml/src", "gpu", "discover")
GO_GREP = r"slog\.(Info|Warn|Error|Debug|Log)\(|logutil\.Trace\(|log\.Printf\("  # git grep -E (no \b)
GO_CALL = re.compile(r'\b(slog\.(?:Info|Warn|Error|Debug|Log)|logutil\.Trace|log\.Printf|log\.Println)\(')
C_CALL = re.compile(r"\b(LOG\([\w>.-]+,|LLAMA_LOG_(?:INFO|WARN|ERROR|DEBUG)|GGML_LOG_(?:INFO|WARN|ERROR|DEBUG)|"
                    r"LOG_(?:INF|WRN|ERR)|GGML_CUDA_LOG_(?:INFO|WARN|ERROR)|fprintf\(stderr,)\s*\(?")
RELEVANT = re.compile(r"gpu|cuda|rocm|hip\b|vulkan|vram|librar|offload|layers|runner|llama.server|device|discover|"
                      r"compute|driver|backend|avx|amdgpu|gfx|nvml|nvidia|cudart|oneapi|inference|server config|"
                      r"listening|weights|igpu|integrated|jetpack|variant|payload|buffer size|fit|overhead|"
                      r"VMM|cublas|out of memory|ggml_cuda|terminated|exited|system_info|load_backend|failed to load|"
                      r"using device|cuInit", re.I)
C_MACROS = {"GGML_CUDA_NAME": "CUDA", "PRId64": "lld", "PRIu64": "llu", "PRIi64": "lli"}
C_FUNC = re.compile(r"^(?![\s#/}{])[\w:<>*&, ]*?\b(\w+)\s*\([^;]*$")
STR = re.compile(r'"((?:[^"\\]|\\.)*)"|`([^`]*)`')


def git(gitdir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={gitdir}", *args], capture_output=True, text=True,
                          errors="replace").stdout


def call_text(src: str, start: int) -> str:
    depth, i = 0, start
    while i < len(src) and i < start + 1500:
        c = src[i]
        if c == '"':
            j = i + 1
            while j < len(src) and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            i = j
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return src[start:i + 1]
        i += 1
    return src[start:start + 300]


def go_entry(call: str, fn: str) -> tuple[str, list[str], str] | None:
    m = STR.search(call)
    skip = 2 if fn == "slog.Log" else 0  # slog.Log(ctx, level, msg, ...)
    if not m or (call[: m.start()].count(",") != skip and fn != "log.Printf"):
        return None
    fmt = m.group(1) if m.group(1) is not None else m.group(2)
    rest = call[m.end():]
    structured = fn.startswith(("slog", "logutil"))
    keys = re.findall(r',\s*"([\w. ]+)"\s*,', rest + ",") if structured else []
    keys += re.findall(r'slog\.\w+\("([\w.]+)"', rest)
    fields = keys if structured else re.findall(r"%[-+ #0-9.]*[a-zA-Z]", fmt)
    return fmt, list(dict.fromkeys(fields)), "slog" if structured else "goprintf"


ERRORF = re.compile(r'err\s*:?=\s*fmt\.Errorf\(\s*"((?:[^"\\]|\\.)*)"')


def logged_error(src: str, start: int) -> tuple[str, list[str], str] | None:
    """`err := fmt.Errorf("…"); slog.Info(err.Error())`: the error's format is the message (a few lines above)."""
    before = src[max(0, start - 600):start]
    found = ERRORF.findall(before)
    if not found:
        return None
    return found[-1], [], "slog"


def c_entry(call: str) -> tuple[str, list[str], str] | None:
    lits: list[str] = []
    pos = 0
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"|\b([A-Z][A-Z0-9_]{3,})\b', call):
        if lits and call[pos:m.start()].strip():
            break  # a comma or an expression: the format string has ended
        if m.group(1) is not None:
            lits.append(m.group(1))
        elif m.group(2) in C_MACROS:  # GGML_CUDA_NAME " error: %s\n" starts with the macro
            lits.append(C_MACROS[m.group(2)])
        elif lits:
            break
        pos = m.end()
    if not lits:
        return None
    fmt = "".join(lits)
    return fmt, re.findall(r"%[-+ #0-9.*]*(?:l|ll|z|h)?[a-zA-Z]", fmt), "c"


SAMPLED = [t for tags in RELEASE_TAGS.values() for t in tags]
GEN_OF_TAG = [((0, 0), (0, 3), "0"), ((0, 3), (0, 5, 8), "A"), ((0, 5, 8), (0, 12, 4), "B"),
              ((0, 12, 4), (0, 26), "C"), ((0, 30), (1, 0), "D")]


def generation(tag: str) -> str:
    v = tuple(int(x) for x in re.findall(r"\d+", tag)[:3])
    return next(g for lo, hi, g in GEN_OF_TAG if lo <= v < hi)


def source_files(gitdir: str) -> None:
    """Print launcher.generations.SOURCE_FILE_GENS: each Go file name that logs, in any directory, → the generations
    of the sampled tags from the first that has it to the last (names every generation has are left out)."""
    where: dict[str, set[int]] = {}
    for i, tag in enumerate(SAMPLED):
        for hit in git(gitdir, "grep", "-l", "-E", GO_GREP, tag, "--", "*.go").split():
            path = hit.split(":", 1)[1]
            if not path.endswith("_test.go"):
                where.setdefault(path.rsplit("/", 1)[-1], set()).add(i)
    for name, idx in sorted(where.items()):
        gens = sorted({generation(t) for t in SAMPLED[min(idx) : max(idx) + 1]})
        if len(gens) < 5:
            print(f'    "{name}": frozenset({{{", ".join(repr(g) for g in gens)}}}),')


GGML_TAG = "v0.21.0"  # ggml-org/ggml, 2026-08-21 (launcher.catalogue.UPSTREAM_GGML_TAG)


def upstream(ggml_gitdir: str, entries: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Generation D runs upstream llama-server, whose GGML is not in Ollama's repository: its statements come from
    ggml-org/ggml at GGML_TAG, cited `path:line@ggml-<tag>`, on the 0.30+ line."""
    for path in git(ggml_gitdir, "ls-tree", "-r", "--name-only", GGML_TAG).split():
        if not (path.startswith("src/") and path.endswith((".c", ".cpp", ".cu", ".cuh", ".h"))):
            continue
        if not re.search(r"ggml-cuda/(?:ggml-cuda\.cu|common\.cuh)|ggml-backend-reg|ggml-vulkan\.cpp|mem_", path):
            continue
        src = git(ggml_gitdir, "show", f"{GGML_TAG}:{path}")
        for m in C_CALL.finditer(src):
            got = c_entry(src[m.end():m.end() + 400].split(";")[0])
            if not got or not got[0].strip() or not RELEVANT.search(got[0]):
                continue
            fmt, fields, shape = got
            e = entries.setdefault((shape, fmt), {"fmt": fmt, "shape": shape, "fields": fields, "at": {},
                                                  "lines": [], "seen": []})
            e["at"].setdefault("0.30+", f"{path}:{src.count(chr(10), 0, m.start()) + 1}@ggml-{GGML_TAG}")
            if "func" not in e:
                func = enclosing_function(src, m.start())
                if func:
                    e["func"] = func
            if "0.30+" not in e["lines"]:
                e["lines"].append("0.30+")


def enclosing_function(src: str, start: int) -> str | None:
    """The C function a log call sits in (the last unindented definition line above it), for `__func__`."""
    for prev in reversed(src[:start].split("\n")[-400:]):
        fm = C_FUNC.match(prev)
        if fm and fm.group(1) not in ("if", "for", "while", "switch", "return"):
            return fm.group(1)
    return None


def main() -> None:
    gitdir = sys.argv[1]
    if sys.argv[2:] == ["--source-files"]:
        source_files(gitdir)
        return
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    for line, tags in RELEASE_TAGS.items():
        for tag in tags:
            files = git(gitdir, "ls-tree", "-r", "--name-only", tag).split()
            for path in files:
                go = path.endswith(".go") and not path.endswith("_test.go") and path.split("/")[0] in GO_DIRS
                c = (path.endswith((".c", ".cpp", ".cu", ".cuh", ".h")) and
                     any(path.startswith(d + "/") for d in C_DIRS) and "/vendor/" not in path)
                if not (go or c):
                    continue
                if c and not re.search(r"gpu_info|ggml-cuda|ggml-backend|ggml-hip|ggml-vulkan|llama-model|llama\.cpp|"
                                       r"llama-context|llama-kv|llama-adapter|server|ggml-cuda\.cu|mem_|common", path):
                    continue
                src = git(gitdir, "show", f"{tag}:{path}")
                for m in (GO_CALL if go else C_CALL).finditer(src):
                    call = call_text(src, m.end() - 1) if go else src[m.end():m.end() + 400].split(";")[0]
                    got = go_entry(call, m.group(1)) if go else c_entry(call)
                    if go and got is None and re.match(r"\(\s*err\.Error\(\)", call):
                        got = logged_error(src, m.start())
                    if not got:
                        continue
                    fmt, fields, shape = got
                    if not fmt.strip() or not RELEVANT.search(fmt + " " + " ".join(fields)):
                        continue
                    lineno = src.count("\n", 0, m.start()) + 1
                    func = enclosing_function(src, m.start()) if c else None
                    key = (shape if shape != "goprintf" else "slog", fmt)
                    e = entries.setdefault(key, {"fmt": fmt, "shape": shape, "fields": fields, "at": {},
                                                 "lines": []})
                    if func and "func" not in e:
                        e["func"] = func
                    e["at"][line] = f"{path}:{lineno}@{tag}"  # the newest representative tag of the line
                    if tag not in e.setdefault("seen", []):
                        e["seen"].append(tag)
                    if line not in e["lines"]:
                        e["lines"].append(line)
    # The same messages printed from files outside GO_DIRS (cmd/, x/, app/ …) widen where they are printed, so that
    # a message is never taken as one generation's when another generation's code prints it too.
    for line, tags in RELEASE_TAGS.items():
        for tag in tags:
            listed = git(gitdir, "grep", "-l", "-E", GO_GREP, tag, "--", "*.go").split()
            for path in (x.split(":", 1)[1] for x in listed):
                if path.endswith("_test.go") or path.split("/")[0] in GO_DIRS:
                    continue
                src = git(gitdir, "show", f"{tag}:{path}")
                for m in GO_CALL.finditer(src):
                    got = go_entry(call_text(src, m.end() - 1), m.group(1))
                    other = entries.get(("slog", got[0])) if got else None
                    if other is None:
                        continue
                    e = other
                    e["at"].setdefault(line, f"{path}:{src.count(chr(10), 0, m.start()) + 1}@{tag}")
                    if tag not in e["seen"]:
                        e["seen"].append(tag)
                    if line not in e["lines"]:
                        e["lines"].append(line)
    if len(sys.argv) > 3 and sys.argv[2] == "--ggml":
        upstream(sys.argv[3], entries)
    for e in entries.values():
        e["seen"].sort(key=lambda t: [int(x) for x in re.findall(r"\d+", t)])
        e["lines"].sort(key=list(RELEASE_TAGS).index)
        e["at"] = [e["at"][x] for x in e["lines"]]
        print(json.dumps(e, ensure_ascii=False))


if __name__ == "__main__":
    main()
