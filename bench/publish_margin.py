"""Which round the product publishes at each publish margin, on the rounds of finished demo runs.

    python bench/publish_margin.py   # reads bench/results/sfr_plus_demo_product.json, sfr_plus_demo_prior.json

For every run those benchmarks recorded, the rounds' mean estimated Dice as today's calibration
judges them (their ``rejudged`` records) go to the product's own ``sfrplus.choose_round`` with each
margin; the table gives the true Dice of the round it publishes minus round 0's.  The margins are
judged on the same runs they are chosen from (in sample): say so wherever a number is quoted.
Results: ``bench/results/publish_margin.{json,md}``.
"""

from __future__ import annotations

import json

from _common import REPO

from SFRSegmenterLib import sfrplus  # noqa: E402

RESULTS = REPO / "bench" / "results"
SOURCES = ("sfr_plus_demo_product", "sfr_plus_demo_prior")
MARGINS = (0.0, 0.01, 0.015, 0.02, 0.03, 0.04)


def records(run: dict) -> list:
    out = []
    drift = {r["round"]: bool(r.get("drift")) for r in run["rounds"]}
    for r in run["rejudged"]["rounds"]:
        rec = sfrplus.RoundRecord(round=r["round"], sam_trained_with_pseudo=[], retrained_with=[], trusted=r["trusted"],
                                  moved_to_trusted=[], moved_to_untrusted=[], mean_confidence=0.0, cases={},
                                  mean_dice=r["mean_dice"], mean_estimated_dice=r["mean_estimated_dice"],
                                  drift=drift.get(r["round"], False))
        out.append(rec)
    return out


def main() -> None:
    rows = []
    for source in SOURCES:
        for run in json.loads((RESULTS / f"{source}.json").read_text())["runs"]:
            recs = records(run)
            row = {"source": source, "seed": run["seed"],
                   "estimated_lead": round(100 * (recs[-1].mean_estimated_dice - recs[0].mean_estimated_dice), 1),
                   "true_gain": round(100 * (recs[-1].mean_dice - recs[0].mean_dice), 1), "by_margin": {}}
            for m in MARGINS:
                k = sfrplus.choose_round(recs, margin=m)
                row["by_margin"][str(m)] = {"round": recs[k].round,
                                            "published_minus_round0": round(100 * (recs[k].mean_dice - recs[0].mean_dice), 1)}
            rows.append(row)
    (RESULTS / "publish_margin.json").write_text(json.dumps({"margins": MARGINS, "rows": rows}, indent=1))
    head = "| run | seed | estimated lead of round 1 | true gain of round 1 | " + " | ".join(f"margin {100 * m:g}" for m in MARGINS) + " |"
    lines = ["# The publish margin: published minus round 0 (true Dice points) on recorded demo runs", "",
             "Each run's rounds as today's calibration judges them, through the product's `sfrplus.choose_round`; a cell is "
             "the published round's true Dice minus round 0's (bench/publish_margin.py). In sample: the shipped margin "
             "(`sfrplus.PUBLISH_MARGIN`, 2 points) was chosen on these runs. `sfr_plus_demo_product` runs are from before "
             "the stage-F prior offsets (their round 1 was made with the older estimate's trust decisions); "
             "`sfr_plus_demo_prior` runs are today's product.", "", head,
             "|" + "---|" * (4 + len(MARGINS))]
    for r in rows:
        cells = [f"{r['by_margin'][str(m)]['published_minus_round0']:+.1f} (r{r['by_margin'][str(m)]['round']})" for m in MARGINS]
        lines.append(f"| {r['source']} | {r['seed']} | {r['estimated_lead']:+.1f} | {r['true_gain']:+.1f} | " + " | ".join(cells) + " |")
    worst = {m: min(r["by_margin"][str(m)]["published_minus_round0"] for r in rows) for m in MARGINS}
    mean = {m: sum(r["by_margin"][str(m)]["published_minus_round0"] for r in rows) / len(rows) for m in MARGINS}
    lines.append("| **worst** | | | | " + " | ".join(f"{worst[m]:+.1f}" for m in MARGINS) + " |")
    lines.append("| **mean** | | | | " + " | ".join(f"{mean[m]:+.2f}" for m in MARGINS) + " |")
    (RESULTS / "publish_margin.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
