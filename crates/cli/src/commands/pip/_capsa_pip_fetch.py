"""Fetches pip's wheel from a package index, for `capsa pip`, once.

Run by capsa in its sandbox, granted only the index and one empty
directory. argv: INDEX_URL WHEEL_NAME SHA256 DEST. The wheel is kept only if
its SHA-256 is the one capsa pins; then it is unpacked into DEST/pip.
"""

import hashlib
import html.parser
import os
import sys
import urllib.parse
import urllib.request
import zipfile


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def main(index, name, sha256, dest):
    page = index.rstrip("/") + "/pip/"
    request = urllib.request.Request(page, headers={"Accept": "text/html"})
    with urllib.request.urlopen(request, timeout=60) as r:
        base = r.geturl()
        text = r.read().decode("utf-8", "replace")
    links = _Links()
    links.feed(text)
    for href in links.hrefs:
        url = urllib.parse.urljoin(base, href)
        if urllib.parse.unquote(urllib.parse.urlsplit(url).path).rsplit("/", 1)[-1] == name:
            break
    else:
        return f"capsa: the index {index} does not list {name}, which capsa pip runs"
    with urllib.request.urlopen(url, timeout=300) as r:
        data = r.read()
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        return f"capsa: {name} from {url} has SHA-256 {got}, not the {sha256} capsa pins; not used"
    wheel = os.path.join(dest, name)
    with open(wheel, "wb") as f:
        f.write(data)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(os.path.join(dest, "pip"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(*sys.argv[1:5]))
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        reason = getattr(exc, "reason", exc)
        sys.exit(f"capsa: cannot fetch pip from {sys.argv[1]}: {reason}")
