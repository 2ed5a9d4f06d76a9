"""Find, for each catalogue entry, a real fixture line that shows it on a release line the sources do not cover.

Usage: python tools/catalogue_fixture_lines.py SHARED_FIXTURES_DIR > fixture-lines.json
(a maintainer's tool, the second input of tools/catalogue_curate.py; run it on a catalogue curated with `{}` as
fixture lines, since it adds only release lines an entry lacks). The version comes from the case's case.json,
0.32.15 for ollama-real-* and generation D's upstream llama-server for ggml-real. It also prints, on stderr, the
fixture lines that produce events but match no entry: candidates for curated.jsonl.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

from launcher.catalogue import Entry, load
from launcher.generations import release_line_of
from launcher.log_input import clean
from launcher.ollama_logs import parse_text

VERB = re.compile(r"%[-+ #0-9.*]*(?:hh|h|ll|l|z|j|t|L)?[diouxXeEfgGcspvqT]")


def printf_regex(fmt: str) -> re.Pattern[str] | None:
    """A regex for lines printed from a printf format (verbs match anything); None for formats too short to tell."""
    first = fmt.replace("\\n", "\n").replace('\\"', '"').strip("\n").split("\n")[0]
    parts = VERB.split(first)
    if sum(len(p.strip()) for p in parts) < 12:
        return None
    return re.compile("^\\s*" + ".{0,300}?".join(re.escape(p) for p in parts).replace("\\ ", " +") + "\\s*$")


def logs(root: Path) -> list[tuple[Path, str, str]]:
    """(path, release line, version pin) of each real log."""
    out: list[tuple[Path, str, str]] = []
    for case in sorted((root / "ollama-logs").iterdir()):
        meta = case / "case.json"
        version = json.loads(meta.read_text()).get("ollama_version") if meta.is_file() else None
        line = release_line_of(str(version)) if version else None
        if line:
            out.append((case / "server.log", line, str(version)))
    out += [(p, "0.30+", "0.32.15") for p in sorted(root.glob("ollama-real-*/*.log"))]
    out += [(p, "0.30+", "0.30+") for p in sorted(root.glob("ggml-real/*.log"))]
    return out


def main() -> None:
    root = Path(sys.argv[1])
    entries = load()
    printf = [(e, r) for e in entries if e.shape in ("c", "goprintf") for r in [printf_regex(e.fmt)] if r]
    slog = [(e, re.compile(r'msg="?' + re.escape(e.fmt.strip()) + r'"?(?: |$)')) for e in entries
            if e.shape == "slog" and not VERB.search(e.fmt) and len(e.fmt) > 6]
    found: dict[str, dict[str, str]] = {}
    unmatched: Counter[tuple[str, str]] = Counter()
    for path, line, pin in logs(root):
        name = "fixture:" + str(path.relative_to(root))
        for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
            text, _ = clean(raw.rstrip(b"\r"))
            hits: list[Entry] = [e for e, r in printf + slog if r.search(text)]
            for e in hits:
                if line not in e.at:
                    found.setdefault(e.id, {}).setdefault(line, f"{name}:{n}@{pin}")
            if not hits and [x for x in parse_text(text + "\n") if x.kind not in ("parse_summary", "generation")]:
                unmatched[(line, re.sub(r"\d+", "N", text)[:90])] += 1
    json.dump(found, sys.stdout, indent=1)
    for (line, text), count in sorted(unmatched.items()):
        print(f"{line}\t{count}\t{text}", file=sys.stderr)


if __name__ == "__main__":
    main()
