"""MkDocs hook: the Results page is benchmarks/RESULTS.md, inserted whole at build time.

benchmarks/RESULTS.md is the one copy of the table of current numbers, readable where it is
(its links are relative to benchmarks/). docs/results.md holds only a placeholder; this hook puts
the file there and re-roots its links from ``../docs/`` to the docs folder, so the site's link
and anchor checks (``mkdocs build --strict``) cover the table too.
"""

from pathlib import Path

PLACEHOLDER = "{{ benchmarks/RESULTS.md }}"


def on_page_markdown(markdown, page, config, **kwargs):
    if PLACEHOLDER not in markdown:
        return markdown
    results = Path(config["config_file_path"]).parent / "benchmarks" / "RESULTS.md"
    return markdown.replace(PLACEHOLDER, results.read_text().replace("](../docs/", "]("))
