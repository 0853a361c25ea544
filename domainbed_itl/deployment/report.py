"""The deployment table: a row per loss, a column per test domain, and the paired difference to
cross-entropy, because losses deployed on the same (test env, trial seed) form a pair.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from domainbed.lib.reporting import standard_error
from domainbed_itl.deployment.candidates import CE_LABEL
from domainbed_itl.deployment.records import Record


def mean_se(values: Sequence[float], signed: bool = False) -> str:
    """`mean ± SE` in percent points (DomainBed's standard error)."""
    mean = 100 * sum(values) / len(values)
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return text if len(values) < 2 else f"{text} ± {100 * standard_error(values):.1f}"


def caption(record: Record, trial_seeds: Sequence[int]) -> str:
    """What the table's numbers are, from the protocol its records share."""
    s = record.settings
    if record.protocol == "mlp":
        how = (f"MLP protocol: the meta-learner's base model (hidden {s['hidden']}, ReLU) "
               f"trained {record.steps} SGD steps (lr {s['lr']}, batch {s['batch_size']}) on the "
               "source domains; test accuracy on the whole test domain")
    else:
        how = (f"DomainBed protocol: ERM's network, {record.steps} steps, default "
               "hyperparameters; test accuracy on the test domain's in split")
    return (f"{record.dataset}, {how}; trial seeds {list(trial_seeds)}; accuracy (%), mean ± "
            "standard error over trial seeds; source: the source domains' held-out accuracy; "
            f"vs {CE_LABEL}: the paired difference (same test env and trial seed), mean ± "
            "standard error, and in how many pairs the loss is ahead")


def table(records: Sequence[Record], labels: Sequence[str] | None = None) -> str:
    """A row per loss (in `labels` order, default: first appearance), a column per test env,
    the source accuracy and, when CE is among the records, the paired difference against it."""
    if not records:
        raise ValueError("no deployment records to tabulate")
    labels = list(labels or dict.fromkeys(r.loss for r in records))
    envs = sorted({r.test_env for r in records})
    by_run = {r.run: r for r in records}
    cells = ["loss", *(f"env{e} (test)" for e in envs)]
    cells += ["avg"] * (len(envs) > 1) + ["source"] + [f"vs {CE_LABEL}"] * (CE_LABEL in labels)
    lines = ["| " + " | ".join(cells) + " |", "|---" * len(cells) + "|"]
    for label in labels:
        mine = [r for r in records if r.loss == label]
        row = [label]
        for env in envs:
            accs = [r.test_acc for r in mine if r.test_env == env]
            row.append(mean_se(accs) if accs else "")
        if len(envs) > 1:
            row.append(f"{100 * sum(r.test_acc for r in mine) / len(mine):.1f}")
        row.append(f"{100 * sum(r.source_acc for r in mine) / len(mine):.1f}")
        if CE_LABEL in labels:
            row.append(paired_difference(mine, by_run) if label != CE_LABEL else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_difference(mine: Iterable[Record],
                      by_run: dict[tuple[str, int, int], Record]) -> str:
    """Test accuracy minus CE's on the same (test env, trial seed), over the pairs that have
    both."""
    diffs = [r.test_acc - by_run[CE_LABEL, r.test_env, r.trial_seed].test_acc for r in mine
             if (CE_LABEL, r.test_env, r.trial_seed) in by_run]
    if not diffs:
        return ""
    ahead = sum(d > 0 for d in diffs)
    return f"{mean_se(diffs, signed=True)} ({ahead}/{len(diffs)} ahead)"


def provenance(records: Sequence[Record]) -> list[str]:
    """Where each learned row comes from, and whether its meta-training saw a test domain
    (then its row is no domain-generalisation result)."""
    lines = []
    for label, meta in {r.loss: r.meta for r in records if r.meta}.items():
        envs = sorted({r.test_env for r in records if r.loss == label})
        line = (f"{label}: meta-learned on {meta['dataset']} without environments "
                f"{meta['exclude_envs']} ({meta['family']}, order {meta['order']}, "
                f"{meta['outer_steps']} outer steps; {meta['run_dir']})")
        seen = [e for e in envs if e not in (meta["exclude_envs"] or [])]
        if meta["dataset"] == records[0].dataset and seen:
            line += f"; it SAW test environment(s) {seen} during meta-training"
        lines.append(line)
    return lines


def report(records: Sequence[Record], labels: Sequence[str] | None = None) -> str:
    """The caption, the table and where the learned losses come from."""
    trials = sorted({r.trial_seed for r in records})
    notes = "".join(f"\n{line}" for line in provenance(records))
    return caption(records[0], trials) + "\n\n" + table(records, labels) + "\n" + notes + (
        "\n" if notes else "")
