#!/usr/bin/env python3
"""Build the advisory database that `cargo deny check advisories` reads, from OSV records.

Why: cargo-deny reads a RustSec-format git repository (crates/<crate>/<ID>.md, each starting with a TOML
block). It normally clones github.com/rustsec/advisory-db, but our machines and CI reach only the package
registries, and no registry package ships that database or the OSV export of it. So the advisories come from OSV
JSON records (the format osv.dev publishes RustSec and GitHub advisories in):
  - .ci/advisories/*.json: the records we keep in the repository (crates in our tree, and the validation cases);
  - any extra OSV records named by $HERALD_OSV_DATA: a directory of *.json or a zip such as osv.dev's
    crates.io/all.zip, copied onto the machine by hand when a full, fresh database is wanted.
This script converts the crates.io records to RustSec format and commits them into a git repository (cargo-deny
opens the database with git and dates it by the HEAD commit), by default $HOME/.cache/herald-advisory-db.
Python 3.11 standard library only.

Usage: advisory-db.py [--out DIR] [OSV_PATH ...]
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_records(paths):
    """Yield OSV records (dicts) from directories of *.json, single .json files and zips of *.json."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for f in sorted(p.rglob("*.json")):
                yield json.loads(f.read_text())
        elif p.suffix == ".zip":
            with zipfile.ZipFile(p) as z:
                for name in sorted(z.namelist()):
                    if name.endswith(".json"):
                        yield json.loads(z.read(name))
        elif p.is_file():
            yield json.loads(p.read_text())
        else:
            sys.exit(f"advisory-db: no such OSV source: {p}")


def toml_str(s):
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def toml_list(items):
    return "[" + ", ".join(toml_str(i) for i in items) + "]"


def ranges_to_rustsec(events):
    """OSV SEMVER events (introduced/fixed pairs, sorted) -> RustSec (patched, unaffected) requirement lists.

    A version is vulnerable when it lies in some [introduced, fixed) interval, which is what RustSec expresses
    as "not in any patched or unaffected range": below the first introduced is unaffected, and from each fix up
    to the next introduced is patched."""
    intervals, start = [], None
    for e in events:
        if "introduced" in e:
            start = e["introduced"]
        elif "fixed" in e and start is not None:
            intervals.append((start, e["fixed"]))
            start = None
        elif "last_affected" in e or "limit" in e:
            raise ValueError(f"unsupported OSV event {e}")
    if start is not None:
        intervals.append((start, None))  # still affected: no fix for the last introduced
    unaffected, patched = [], []
    if intervals and intervals[0][0] not in ("0", "0.0.0", "0.0.0-0"):
        unaffected.append(f"< {intervals[0][0]}")
    for i, (_, fixed) in enumerate(intervals):
        if fixed is None:
            continue
        nxt = intervals[i + 1][0] if i + 1 < len(intervals) else None
        patched.append(f">= {fixed}, < {nxt}" if nxt else f">= {fixed}")
    return patched, unaffected


def to_rustsec(rec, aff):
    """One OSV record + one of its crates.io `affected` entries -> (crate, id, markdown text)."""
    crate = aff["package"]["name"]
    ds = {**rec.get("database_specific", {}), **aff.get("database_specific", {})}
    events = []
    for r in aff.get("ranges", []):
        if r.get("type") == "SEMVER":
            events += r["events"]
    if not events and aff.get("versions"):
        raise ValueError(f"{rec['id']}: only explicit version lists, no SEMVER ranges")
    patched, unaffected = ranges_to_rustsec(events)
    url = ds.get("url") or next(
        (r["url"] for r in rec.get("references", []) if r.get("type") in ("ADVISORY", "REPORT", "WEB")), None)
    date = (rec.get("published") or rec.get("modified"))[:10]
    aliases = [a for a in rec.get("aliases", []) if a != rec["id"]]
    cvss = next((s["score"] for s in rec.get("severity", []) if s.get("type") == "CVSS_V3"), None)
    lines = ["```toml", "[advisory]", f"id = {toml_str(rec['id'])}", f"package = {toml_str(crate)}",
             f"date = {toml_str(date)}"]
    if url:
        lines.append(f"url = {toml_str(url)}")
    if ds.get("informational"):
        lines.append(f"informational = {toml_str(ds['informational'])}")
    if ds.get("categories"):
        lines.append(f"categories = {toml_list(ds['categories'])}")
    if cvss:
        lines.append(f"cvss = {toml_str(cvss)}")
    if aliases:
        lines.append(f"aliases = {toml_list(aliases)}")
    if rec.get("withdrawn"):
        lines.append(f"withdrawn = {toml_str(rec['withdrawn'][:10])}")
    lines += ["", "[versions]", f"patched = {toml_list(patched)}"]
    if unaffected:
        lines.append(f"unaffected = {toml_list(unaffected)}")
    lines += ["```", "", f"# {rec.get('summary') or rec['id']}", ""]
    if rec.get("details"):
        lines += [rec["details"].strip(), ""]
    return crate, rec["id"], "\n".join(lines)


def git(repo, *args, env=None):
    subprocess.run(["git", "-C", str(repo), *args], check=True, stdout=subprocess.DEVNULL, env=env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/herald-advisory-db"))
    ap.add_argument("sources", nargs="*", help="extra OSV sources (directories, .json files, zips)")
    args = ap.parse_args()
    sources = [HERE / "advisories", *args.sources]
    if os.environ.get("HERALD_OSV_DATA"):
        sources.append(os.environ["HERALD_OSV_DATA"])

    out = Path(args.out)
    crates_dir = out / "crates"
    if crates_dir.exists():
        shutil.rmtree(crates_dir)
    crates_dir.mkdir(parents=True)
    seen, latest = {}, ""
    for rec in load_records(sources):
        for aff in rec.get("affected", []):
            if aff.get("package", {}).get("ecosystem") != "crates.io":
                continue
            crate, adv_id, text = to_rustsec(rec, aff)
            seen[(crate, adv_id)] = True  # the same advisory from two sources: the later source wins
            d = crates_dir / crate
            d.mkdir(exist_ok=True)
            (d / f"{adv_id}.md").write_text(text)
            latest = max(latest, rec.get("modified") or rec.get("published") or "")
    (out / "README.md").write_text(
        "Generated by herald's .ci/advisory-db.py from OSV records; do not edit.\n")

    if not (out / ".git").exists():
        git(out, "init", "-q", "-b", "main")
    git(out, "add", "-A")
    # The commit is dated now: cargo-deny's staleness check reads the HEAD commit time, and this is when the
    # database was assembled. The newest record's own date is printed so a stale snapshot is visible.
    env = {**os.environ, "GIT_AUTHOR_NAME": "herald-ci", "GIT_AUTHOR_EMAIL": "ci@herald.invalid",
           "GIT_COMMITTER_NAME": "herald-ci", "GIT_COMMITTER_EMAIL": "ci@herald.invalid"}
    git(out, "commit", "-q", "--allow-empty", "-m",
        f"advisories from OSV records ({len(seen)} entries)", env=env)
    print(f"advisory db: {out} ({len(seen)} advisories; newest record {latest[:10] or 'n/a'}; "
          f"built {datetime.date.today().isoformat()})")


if __name__ == "__main__":
    main()
