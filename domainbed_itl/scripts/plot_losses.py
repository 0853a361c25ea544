"""Fig. 5 of the paper: each loss plotted against the probability p given to the true class.

A multi-class loss depends on the whole probability vector, so the curve needs a convention:
here the remaining mass 1 - p is spread evenly over the other C - 1 classes (C = 10 by
default), and the loss of one example with that softmax output is plotted. As in the paper,
ITL (and any other Taylor loss given with --omega) is min-max normalised to [0, 1] on the
plotted range, since its raw values are offset by label-only constants; CE, SCE and focal are
drawn as they are.

    python -m domainbed_itl.scripts.plot_losses --out fig5.png [--omega w0 w1 ... w11] \
        [--learned out/meta/learned_loss.json]

A learned loss (`--learned`, the learned_loss.json of meta_train or meta_cmaes) is drawn the
same way: normalised if it is a Taylor loss, as it is if it is iSCE.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from domainbed.lib import atomic
from domainbed.lib.cli import OneLineParser, UsageError, command
from domainbed.lib.output_dir import check_output_dir
from domainbed_itl.losses import get_loss, n_taylor_params
from domainbed_itl.losses.learned import LearnedLoss, LearnedLossError

MAX_ORDER = 8


def logits_for(p: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose softmax gives class 0 probability p and the other classes (1 - p)/(C - 1)."""
    rest = (1 - p) / (num_classes - 1)
    return torch.cat([p.log()[:, None], rest.log()[:, None].expand(-1, num_classes - 1)], 1)


def loss_curve(loss: torch.nn.Module, p: torch.Tensor, num_classes: int) -> torch.Tensor:
    targets = torch.zeros(len(p), dtype=torch.long)
    with torch.no_grad():
        return loss(logits_for(p, num_classes), targets)


def order_of(omega: list[float]) -> int:
    for order in range(2, MAX_ORDER + 1):
        if n_taylor_params(order) == len(omega):
            return order
    sizes = ", ".join(f"{n_taylor_params(k)} (order {k})" for k in range(2, 6))
    raise ValueError(f"--omega has {len(omega)} values; a Taylor loss takes {sizes}")


def panels(omegas: list[list[float]], learned: list[tuple[Path, LearnedLoss]] = ()
           ) -> list[tuple[str, torch.nn.Module, bool]]:
    """(title, loss with per-example reduction, normalise?) for each panel, left to right."""
    shown = [("CE", get_loss("ce", reduction="none"), False),
             ("SCE (alpha=0.1, beta=1)", get_loss("sce", reduction="none"), False),
             ("Focal (gamma=3)", get_loss("focal", reduction="none"), False),
             ("ITL (Table 8, normalised)", get_loss("itl", reduction="none"), True)]
    for i, omega in enumerate(omegas, 1):
        order = order_of(omega)
        loss = get_loss("taylor", omega=omega, order=order, reduction="none")
        shown.append((f"--omega #{i} (order {order}, normalised)", loss, True))
    for path, loss in learned:
        normalise = loss.format.label_offset
        label = path.parent.name or path.name
        shown.append((f"{label} ({loss.describe()}{', normalised' if normalise else ''})",
                      loss.module(reduction="none"), normalise))
    return shown


def plot(out: Path, omegas: list[list[float]], num_classes: int, points: int = 400,
         learned: list[tuple[Path, LearnedLoss]] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = torch.linspace(1e-3, 1 - 1e-3, points, dtype=torch.float64)
    shown = panels(omegas, learned)
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), squeeze=False)
    for ax, (title, loss, normalise) in zip(axes[0], shown, strict=True):
        y = loss_curve(loss, p, num_classes)
        if normalise:
            ax.text(0.03, 0.03, f"raw {y.min():.2f} to {y.max():.2f}", transform=ax.transAxes,
                    fontsize=8)
            y = (y - y.min()) / (y.max() - y.min())
        ax.plot(p.numpy(), y.numpy())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("true-class probability p")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    fig.suptitle(f"Losses against p; the other {num_classes - 1} classes share 1 - p equally",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic.atomic_open(out, "wb") as handle:
            fig.savefig(handle, format="png", dpi=120)
    finally:
        plt.close(fig)


@command("plot_losses")
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="plot_losses", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("fig5_losses.png"))
    parser.add_argument("--omega", type=float, nargs="+", action="append", default=[],
                        help="parameters of another Taylor loss to plot; repeat for several")
    parser.add_argument("--learned", type=Path, action="append", default=[], metavar="FILE",
                        help="a learned_loss.json (Taylor or iSCE) to plot; repeat for several")
    parser.add_argument("--num_classes", type=int, default=10)
    args = parser.parse_args(argv)
    if args.num_classes < 2:
        raise UsageError("--num_classes must be at least 2")
    try:
        panels(args.omega)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        learned = [(path, LearnedLoss.from_file(path)) for path in args.learned]
    except LearnedLossError as error:
        raise UsageError(f"--learned {error}") from None
    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a directory; name the PNG file to write")
    check_output_dir(args.out.parent, "the directory of --out")
    try:
        plot(args.out, args.omega, args.num_classes, learned=learned)
    except OSError as error:  # e.g. a full disk: the figure is not written, nothing half done
        print(f"{parser.prog}: error: cannot write {args.out} ({error.strerror or error})",
              file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
