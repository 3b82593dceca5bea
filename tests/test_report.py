"""The one report renderer: every block type reaches the page, every text is escaped, pages are written whole."""

from __future__ import annotations

from vidlab.report import Figure, Gallery, Paragraph, Preformatted, Report, Section, Table, render_html, write_report


def test_every_block_is_rendered_and_every_text_escaped():
    page = render_html(Report("R <&>", [
        Paragraph("a <b> & c"),
        Table([["metric", "value"], ["R1", "<1>"]]),
        Section("Queries", [
            Preformatted("line 1\n<line 2>"),
            Gallery([Figure("thumbs/a.png", "a.mp4", "a red square", "0.913", width=96)], title='"left"'),
        ]),
        Section("Deeper", [Figure("plot.png", "plot")], level=3),
    ]))
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<title>R &lt;&amp;&gt;</title>" in page and "<h1>R &lt;&amp;&gt;</h1>" in page
    assert "<p>a &lt;b&gt; &amp; c</p>" in page
    assert "<th>metric</th><th>value</th>" in page and "<tr><td>R1</td><td>&lt;1&gt;</td></tr>" in page
    assert "<pre>line 1\n&lt;line 2&gt;</pre>" in page and "<h2>Queries</h2>" in page and "<h3>Deeper</h3>" in page
    assert '<img src="thumbs/a.png" alt="a.mp4" width="96">' in page and "<h3>&#34;left&#34;</h3>" in page
    assert "<figcaption>a red square<br><small>0.913</small></figcaption>" in page


def test_a_page_is_written_whole_and_replaces_the_old_one(tmp_path):
    path = tmp_path / "out" / "report.html"
    write_report(Report("first"), path)
    write_report(Report("second"), path)
    assert "<h1>second</h1>" in path.read_text() and [p.name for p in path.parent.iterdir()] == ["report.html"]
