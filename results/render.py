"""Render tables as Markdown (printed), CSV (long form, with std, seed count and seeds) and LaTeX."""
import csv
import io

MISSING = "-"


def cell_text(cell, metrics):
    """'72.13 (n=3)', '80.10 / 70.00 / 74.71 (n=2)', '71.17 (2/11)', '-' ...

    The marks: how many datasets an average covers, and how many seeds a project cell averages
    ('n=3/2, mixed seeds' when base and new come from different seed sets).
    """
    if cell is None:
        return MISSING
    values = [cell.get(metric) for metric in metrics]
    text = " / ".join(MISSING if v is None else v.number() for v in values)
    marks = [v.partial for v in values if v is not None and v.partial][:1]
    seed_sets = [v.seeds for v in values if v is not None and v.n is not None]
    if len(set(seed_sets)) == 1:
        marks.append(f"n={len(seed_sets[0])}")
    elif seed_sets:
        marks.append(f"n={'/'.join(str(len(s)) for s in seed_sets)}, mixed seeds")
    return f"{text} ({'; '.join(marks)})" if marks else text


def table_lines(table):
    return [[label] + [cell_text(c, table.metrics) for c in cells] for label, cells in table.rows]


def to_markdown(table):
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(table.header) + " |")
    lines.append("|" + "|".join("---" for _ in table.header) + "|")
    for row in table_lines(table):
        lines.append("| " + " | ".join(row) + " |")
    if table.notes:
        lines.append("")
        lines.extend(table.notes)
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("table", "row", "column", "metric", "mean", "std", "n_seeds", "partial", "seeds")


def to_csv(tables):
    """One long-form CSV for several tables: one line per (row, column, metric)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for table in tables:
        for label, cells in table.rows:
            for column, cell in zip(table.header[1:], cells):
                if cell is None:
                    continue
                for metric in table.metrics:
                    value = cell.get(metric)
                    if value is None:
                        continue
                    writer.writerow([
                        table.key, label, column, metric, f"{value.mean:.4f}",
                        "" if value.std is None else f"{value.std:.4f}",
                        "" if value.n is None else value.n, value.partial,
                        " ".join(map(str, value.seeds))])
    return buffer.getvalue()


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def latex_escape(text):
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table):
    columns = "l" + "c" * (len(table.header) - 1)
    lines = [f"% {latex_escape(table.title)}", f"\\begin{{tabular}}{{{columns}}}", "\\toprule",
             " & ".join(latex_escape(h) for h in table.header) + r" \\", "\\midrule"]
    for row in table_lines(table):
        lines.append(" & ".join(latex_escape(c) for c in row) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)
