"""Independent check of dsmoe's SVG charts (tests/cpp/test_report.cpp).

usage: svg_check.py OUT.json FILE.svg [FILE.svg ...]

Each file must be well-formed XML with an <svg> root in the SVG namespace, a width, height and
viewBox, only finite numbers in geometric attributes, and every url(#id) must name an element of
the file. OUT.json gets, per file, its elements in document order as
{"tag", "attrib", "text", "group"} (group: the class of the nearest <g> ancestor with one), so that
the C++ test can check where data landed without parsing XML itself. Exits non-zero with a
message on the first problem.
"""
import json
import math
import re
import sys
import xml.etree.ElementTree as ET

SVG = "{http://www.w3.org/2000/svg}"
NUMERIC = {"x", "y", "width", "height", "cx", "cy", "r", "x1", "y1", "x2", "y2", "offset"}
GEOMETRY = NUMERIC | {"points", "d", "transform", "viewBox"}
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def numbers_in(text):
    return [float(m.group(0)) for m in NUMBER.finditer(text)]


def check(path):
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        sys.exit(f"{path}: not well-formed XML: {e}")
    if root.tag != SVG + "svg":
        sys.exit(f"{path}: root element is {root.tag}, expected an svg element in the SVG namespace")
    for a in ("width", "height", "viewBox"):
        if a not in root.attrib:
            sys.exit(f"{path}: <svg> has no {a}")
    ids = {e.attrib["id"] for e in root.iter() if "id" in e.attrib}
    out = []

    def walk(e, group):
        tag = e.tag.replace(SVG, "")
        for k, v in e.attrib.items():
            low = v.lower()
            if k in GEOMETRY and ("nan" in low or "inf" in low):
                sys.exit(f"{path}: <{tag} {k}=\"{v}\"> holds a non-finite number")
            if k in NUMERIC and not v.endswith("%"):
                try:
                    if not math.isfinite(float(v)):
                        raise ValueError
                except ValueError:
                    sys.exit(f"{path}: <{tag} {k}=\"{v}\"> is not a finite number")
            if k in ("points", "d"):
                for x in numbers_in(v):
                    if not math.isfinite(x):
                        sys.exit(f"{path}: <{tag} {k}> holds a non-finite number")
            for ref in re.findall(r"url\(#([^)]*)\)", v):
                if ref not in ids:
                    sys.exit(f"{path}: <{tag} {k}=\"{v}\"> refers to a missing id '{ref}'")
        out.append({"tag": tag, "attrib": dict(e.attrib), "text": e.text or "", "group": group})
        child_group = e.attrib.get("class", group) if tag == "g" else group
        for c in e:
            walk(c, child_group)

    walk(root, "")
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    result = {p: check(p) for p in sys.argv[2:]}
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
