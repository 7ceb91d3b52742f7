"""A Fig. 5-like figure: base, new and HM accuracy per dataset, one bar per method."""
import io

from dassl.utils import atomic_write_bytes

PANELS = (("base", "Base classes"), ("new", "New classes"), ("hm", "Harmonic mean"))


def plot_base2new(table, path):
    """Save a PNG of a base-to-new Table (rows: datasets + Average, columns: methods).

    Comparison columns ("X vs Y") are differences, not accuracies, and are left out.
    """
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    methods = [i for i, name in enumerate(table.header[1:]) if " vs " not in name]
    if not methods:
        raise ValueError("The base-to-new table has no method columns to plot.")
    labels = [label for label, _ in table.rows]
    width = 0.8 / len(methods)
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(max(6.0, 1.1 * len(labels) + 2), 9),
                             sharex=True)
    for axis, (metric, title) in zip(axes, PANELS):
        for slot, column in enumerate(methods):
            heights = []
            for _, cells in table.rows:
                cell = cells[column]
                value = None if cell is None else cell.get(metric)
                heights.append(float("nan") if value is None else value.mean)
            positions = [x + (slot - (len(methods) - 1) / 2) * width for x in range(len(labels))]
            axis.bar(positions, heights, width=width, label=table.header[1 + column])
        axis.set_title(title)
        axis.set_ylabel("accuracy (%)")
        axis.set_ylim(0, 100)
        axis.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(labels)))
    axes[-1].set_xticklabels(labels, rotation=30, ha="right")
    # Outside the axes, so that no bar is hidden; bbox_inches="tight" keeps it in the file.
    axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))
    return path
