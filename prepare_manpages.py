"""prepare_manpages.py - a second corpus of real English text from this machine's manual pages, as JSONL.

    python prepare_manpages.py OUT.jsonl [MAX_PAGES]      (default 4000)

Each line is {"text": <one manual page as plain text, by groff at its default width of 78 columns (a few
preformatted lines run longer)>, "meta": {"source": path}}.
Sections 1, 5, 7 and 8 of /usr/share/man (commands, file formats, overviews, administration), English only;
left out: links (.so pages), pages under 2,000 bytes of source or 1,000 characters of text, exact duplicates
of a page already taken, and the Google Cloud SDK's generated gcloud/bq/gsutil pages (thousands of near-copies
of one template). The pages are ordered by a hash of their file name: a fixed order that mixes the packages, so
the last documents (the validation set) are not one package's pages. The corpus depends on what is installed:
its line count, byte count and a digest are printed, to state beside any result.
Used to check a conclusion of the demo corpus on text of another kind (docs/data.md, "Train on your own JSONL").
Writes OUT.tmp beside OUT and renames it at the end (removed if the run fails); refuses to overwrite an
existing OUT. A page that does not decompress is skipped and counted.
"""
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

MAN = Path("/usr/share/man")
SECTIONS = (1, 5, 7, 8)
SKIP_PREFIXES = ("gcloud", "bq", "gsutil")


def die(msg):
    sys.exit(f"prepare_manpages.py: error: {msg}")


def man_pages():
    pages = [p for s in SECTIONS for p in (MAN / f"man{s}").glob("*.gz")
             if p.is_file() and not p.is_symlink() and not p.name.startswith(SKIP_PREFIXES)]
    return sorted(pages, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())


def render(src):
    """groff's plain-text rendering of one page's source: no colour, bold or underline, no hyphenation."""
    r = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou", "-rHY=0", "-dAD=l"], input=src, capture_output=True)
    text = "\n".join(line.rstrip() for line in r.stdout.decode("utf-8", "replace").splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def main(argv):
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    if len(argv) not in (1, 2):
        print("usage: python prepare_manpages.py OUT.jsonl [MAX_PAGES]", file=sys.stderr)
        return 2
    out = Path(argv[0])
    try:
        max_pages = int(argv[1]) if len(argv) > 1 else 4000
    except ValueError:
        max_pages = 0
    if max_pages < 1:
        die(f"MAX_PAGES must be a whole number of 1 or more, got {argv[1]!r}")
    if out.exists():
        die(f"{out} exists; give another name or remove it yourself")
    if not out.parent.is_dir():
        die(f"folder not found: {out.parent}")
    if shutil.which("groff") is None:
        die("groff not found (Debian: apt-get install groff-base)")
    pages = man_pages()
    if not pages:
        die(f"no manual pages in {MAN}/man{{{','.join(map(str, SECTIONS))}}}")
    seen, n, unreadable, digest = set(), 0, 0, hashlib.sha256()
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            for p in pages:
                if n >= max_pages:
                    break
                try:
                    src = gzip.decompress(p.read_bytes())
                except (OSError, EOFError):
                    unreadable += 1
                    continue
                if src.startswith(b".so ") or len(src) < 2000:
                    continue
                text = render(src)
                key = hashlib.sha256(text.encode()).hexdigest()
                if len(text) < 1000 or key in seen:
                    continue
                seen.add(key)
                line = json.dumps({"text": text, "meta": {"source": str(p)}}) + "\n"
                f.write(line)
                digest.update(line.encode())
                n += 1
        if n == 0:
            die("no page rendered to 1,000 characters or more")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    skipped = f" ({unreadable} unreadable page(s) skipped)" if unreadable else ""
    print(f"{n} pages, {out.stat().st_size:,} bytes, sha256 {digest.hexdigest()[:16]} -> {out}{skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
