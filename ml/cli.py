"""`rlxf` command line: generate synthetic MONA, check and land a MONA file, summarise a data home and the
effective settings of its profile."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ml.config import PROFILES, Profile, ProfileError, changed_settings, profile_for_home
from ml.io import atomic_copy
from ml.paths import DataHome, default_home


def _home(args: argparse.Namespace) -> DataHome:
    """--home, else RLXF_HOME, else .rlxf/<profile>; the profile from --profile, else RLXF_PROFILE (as the
    Dagster assets resolve them, so `rlxf` and the pipeline use the same data home)."""
    if args.profile not in PROFILES:
        sys.exit(f"rlxf: unknown profile {args.profile!r} (from RLXF_PROFILE); choose one of {sorted(PROFILES)}")
    return DataHome(Path(args.home) if args.home else default_home(args.profile))


def _profile(args: argparse.Namespace, home: DataHome) -> Profile:
    """The effective profile, as the Dagster resource loads it: --profile-file (else $RLXF_PROFILE_FILE,
    else <home>/profile.toml when it exists) over the built-in profile."""
    try:
        return profile_for_home(args.profile, home, args.profile_file)
    except ProfileError as error:
        sys.exit(f"rlxf: {error}")


def cmd_generate(args: argparse.Namespace) -> int:
    from ml.data.synthetic import write_synthetic_export

    out = Path(args.out)
    export, truth = write_synthetic_export(out, out / "truth", args.rows, seed=args.seed, fmt=args.format)
    print(f"wrote {export} (truth sidecar: {truth})")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """Check a MONA export with the reader, then drop it into the landing folder, never over another file."""
    from ml.data.ingest import file_sha256, handled_files
    from ml.data.reader import MonaReadError, read_mona_file
    from ml.data.warehouse import WarehouseError

    source = Path(args.file)
    try:
        mona = read_mona_file(source)
    except MonaReadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a file the reader chokes on: name it, no traceback
        print(f"error: {source.name}: cannot be read ({type(error).__name__}: {error})", file=sys.stderr)
        return 2
    for warning in mona.warnings:
        print(f"warning: {source.name}: {warning}", file=sys.stderr)
    for problem in mona.rejected.itertuples():
        sheet = f" sheet {problem.source_sheet!r}" if problem.source_sheet else ""
        print(f"rejected: {source.name}{sheet} row {problem.source_row} column {problem.column_name}: "
              f"{problem.problem}", file=sys.stderr)
    home = _home(args).ensure()
    sha = file_sha256(source)
    try:
        handled = handled_files(home.warehouse).handled
    except WarehouseError:  # a job holds the warehouse: ingestion recognizes the file by sha256 anyway
        handled = {}
    if sha in handled:
        print(f"{source.name}: already {handled[sha]} in {home.warehouse} (same sha256); not landed again")
        return 0
    # A different file of the same name may be waiting: both must reach the warehouse.
    target = home.landing / source.name
    renamed = target.with_name(f"{source.stem}.{sha[:12]}{source.suffix}")
    for waiting in (target, renamed):
        if waiting.exists() and file_sha256(waiting) == sha:
            print(f"{source.name}: already waiting in {home.landing} as {waiting.name}")
            return 0
    if target.exists():
        target = renamed
        print(f"note: another {source.name} is already waiting in {home.landing}; this one lands as {target.name}")
    atomic_copy(source, target)  # hidden until complete: the sensor skips .partial names
    print(f"{source.name}: {len(mona.rows)} rows ok, {len(mona.rejected)} rejected; landed in {target}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Where a profile's results are, with the headline numbers of each stage that has run."""
    home = _home(args)
    profile = _profile(args, home)
    print(f"profile {args.profile}: data home {home.root}")
    _print_settings(profile)
    if home.warehouse.exists():
        from ml.data.warehouse import connect

        con = connect(home.warehouse, read_only=True)
        try:
            raw = con.execute("select count(*), count(distinct source_file) from raw.mona_conditions").fetchone()
            print(f"  warehouse   {home.warehouse}: {raw[0]:,} raw rows from {raw[1]} file(s)")
            tables = {row[0] for row in con.execute("select table_name from information_schema.tables").fetchall()}
            if "int_mona__labeled" in tables:
                labels = con.execute("select label, count(*) from int_mona__labeled group by 1 order by 1")
                for label, n in labels.fetchall():
                    print(f"              {label:<9} {n:>8,} conditions")
        finally:
            con.close()
    manifest = home.exports / "splits" / "manifest.json"
    if manifest.exists():
        snapshot = json.loads(manifest.read_text(encoding="utf-8"))
        print(f"  splits      {manifest.parent}: {snapshot['rows']} (MET share {snapshot['met_share']})")
    if (home.root / "mlflow.db").exists():
        from ml.registry import Registry

        with Registry.for_home(home.root) as registry:
            for name in ("rlxf-reward-model", "rlxf-gold-reward-model", "rlxf-rl-reward", "rlxf-policy-adapter"):
                versions = registry.versions(name) if registry.client.search_registered_models(
                    f"name = '{name}'") else []
                champion = next((v.version for v in versions if "champion" in v.aliases), None)
                if versions:
                    which = f"champion v{champion}" if champion else f"newest v{versions[-1].version}"
                    print(f"  mlflow      {name}: {len(versions)} version(s), {which}")
    headline_file = home.reports / "evaluation" / "headline.json"
    if headline_file.exists():
        summary = json.loads(headline_file.read_text(encoding="utf-8"))
        headline = summary["headline"]
        tuned = summary["algorithm"]
        print(f"  report      {home.reports / 'evaluation' / 'report.html'}")
        attainable = headline.get("attainable_judged_reward")
        if attainable is not None and f"{tuned}_judged_reward" in headline:
            print(f"              {tuned.upper()} reaches {headline[f'{tuned}_judged_reward'] / attainable:.0%} of the "
                  f"attainable judged reward ({headline[f'{tuned}_judged_reward']:.3f} of {attainable:.3f}: gold "
                  f"P(MET) x P(about the area asked), best real condition of the area = 100%)")
        print(f"              {'policy':<10} {'judged':>7} {'gold P(MET)':>11} {'proxy P(MET)':>12} "
              f"{'on topic':>8} {'KL to ref':>9} {'KL to base':>10}")
        for policy in ("base", "sft", tuned, "random", "historical"):
            if f"{policy}_gold_p_met" not in headline:
                continue
            cells = [_cell(headline.get(f"{policy}_{key}"), fmt) for key, fmt in (
                ("judged_reward", "{:.3f}"), ("gold_p_met", "{:.3f}"), ("proxy_p_met", "{:.3f}"),
                ("on_topic_rate", "{:.0%}"), ("kl_to_reference", "{:.2f}"), ("kl_to_base", "{:.2f}"))]
            print(f"              {policy:<10} {cells[0]:>7} {cells[1]:>11} {cells[2]:>12} {cells[3]:>8} "
                  f"{cells[4]:>9} {cells[5]:>10}")
        print(f"              decision: {summary['decision']}")
    quarantined = sorted(p.name for p in home.quarantine.glob("*")  # not reasons, not a killed copy's .partial
                         if not p.name.endswith(".reason.txt") and not p.name.startswith(".")) \
        if home.quarantine.exists() else []
    if quarantined:
        print(f"  quarantine  {home.quarantine}: {', '.join(quarantined)}")
    return 0


def _print_settings(profile: Profile) -> None:
    """The effective settings: the built-in profile and, key by key, what the overrides changed."""
    if not profile.sources:
        print(f"  settings    the built-in {profile.name} profile (no overrides)")
        return
    changed = changed_settings(profile)
    print(f"  settings    the built-in {profile.name} profile with {', '.join(profile.sources)}: "
          f"{len(changed)} setting(s) changed")
    for key, (built_in, value) in changed.items():
        print(f"              {key} = {_toml(value)}   ({profile.name}: {_toml(built_in)})")


def _toml(value: object) -> str:
    """A value as an override file writes it (TOML has no null: an unset option is "none")."""
    return '"none"' if value is None else json.dumps(value)


def _cell(value: float | None, fmt: str) -> str:
    """A summary cell; a figure that does not apply (a KL for a reference policy) is a dash, never nan."""
    return "-" if value is None or value != value else fmt.format(value)


def _quiet_model_loading() -> None:
    """What `score` and `recommend` print is the answer: no weight-loading progress bars or libraries'
    deprecation notices around it."""
    import warnings

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def cmd_score(args: argparse.Namespace) -> int:
    """P(MET) of one condition from the reward models of the newest RL reward, and whether it is about the area."""
    from ml.recommend import InputError, score

    _quiet_model_loading()
    try:
        scored = score(_home(args), args.country, args.arrangement, args.area, args.condition)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in scored.warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"proxy P(MET) = {scored.proxy_p_met:.3f}   gold P(MET) = {scored.gold_p_met:.3f}   "
          f"P(about the area asked) = {scored.p_area:.3f}")
    print(f"({scored.header})")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    """Proposals from the champion policy, each with its P(MET), topic probability, copy flag and precedents."""
    from ml.evaluation.metrics import SLIP_BELOW, first_word
    from ml.recommend import InputError, recommend

    _quiet_model_loading()
    try:
        proposals = recommend(_home(args), args.country, args.arrangement, args.area, n=args.n, seed=args.seed)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in proposals.warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(proposals.header)
    for i, proposal in enumerate(proposals.items, 1):
        print(f"\n{i}. {proposal.text}\n   proxy P(MET) {proposal.proxy_p_met:.3f}   gold P(MET) "
              f"{proposal.gold_p_met:.3f}   P(about the area asked) {proposal.p_area:.3f}")
        if proposal.cut_off:
            print("   cut off at the token limit: its end is missing")
        if proposal.off_topic:
            print(f"   probably about another area: the training reward's area classifier gives the area asked "
                  f"{proposal.proxy_p_area:.2f}")
        if proposal.copy_of:
            print(f"   copies a training condition: {proposal.copy_of}")
        if proposal.restates:
            print(f"   restates a condition this country already had: {proposal.restates}")
        if proposal.other_countries:
            print(f"   names another country ({', '.join(proposal.other_countries)}): rewrite it for the country asked")
        if proposal.slip is not None:
            where = f'"{proposal.slip}"' if proposal.slip else "its end"
            print(f"   holds a slip of sampling: the policy drew {where} at a chance under {SLIP_BELOW:g}; "
                  f"read it closely")
        if proposal.unknown_names:
            print(f"   names what no condition of the record names ({', '.join(proposal.unknown_names)}): "
                  f"check that it exists")
        if proposal.echoes:
            words = ", ".join(f'"{word}"' for word in proposal.echoes)
            print(f"   borrows the question's words ({words}), which no condition of the record uses: it may speak "
                  f"of the request instead of stating a measure")
        if proposal.past_years:
            years = ", ".join(map(str, proposal.past_years))
            print(f"   names a past year ({years}): learnt from old conditions; give it this program's date")
        if proposal.repeats:
            print("   repeats itself (a stuttered word or a phrase said twice): edit before use")
        if proposal.record_opening:
            print(f"   opens with \"{first_word(proposal.text).capitalize()}\" where the record's conditions say "
                  f"\"{proposal.record_opening.capitalize()}\": edit before use")
        if proposal.rewords:
            print(f"   rewords proposal {proposal.rewords}: the policy gave fewer different proposals than asked")
        if proposal.action:
            action = proposal.action
            print(f"   of this area's {action.conditions} conditions that open with \"{action.word.capitalize()}\", "
                  f"{action.met_share:.0%} were met (all its conditions: {action.area_met_share:.0%})")
        if proposal.precedents:
            print("   closest precedents in this area:")
        for precedent in proposal.precedents:
            print(f"   - {precedent}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlxf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_home(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--profile", choices=sorted(PROFILES), default=os.environ.get("RLXF_PROFILE", "demo"),
                       help="default: $RLXF_PROFILE, else demo")
        p.add_argument("--home", default=os.environ.get("RLXF_HOME") or None,
                       help="data home (default: $RLXF_HOME, else .rlxf/<profile> in the repository)")
        p.add_argument("--profile-file", default=os.environ.get("RLXF_PROFILE_FILE") or None,
                       help="TOML overrides of the profile (default: $RLXF_PROFILE_FILE, else <home>/profile.toml "
                            "when it exists)")
        return p

    generate = sub.add_parser("generate", help="write a synthetic MONA export")
    generate.add_argument("--rows", type=int, default=12_000)
    generate.add_argument("--seed", type=int, default=2024)
    generate.add_argument("--format", choices=["csv", "xlsx"], default="csv")
    generate.add_argument("--out", required=True)
    generate.set_defaults(func=cmd_generate)

    ingest = with_home(sub.add_parser("ingest", help="check a MONA export and drop it into the landing folder"))
    ingest.add_argument("file")
    ingest.set_defaults(func=cmd_ingest)

    score = with_home(sub.add_parser("score", help="P(MET) of one condition from the champion reward model"))
    score.add_argument("--country", required=True)
    score.add_argument("--arrangement", default=None, help="arrangement type, e.g. ECF, EFF, SBA")
    score.add_argument("--area", default=None, help="economic area, e.g. 'Revenue administration, including customs'")
    score.add_argument("--condition", required=True, help="the condition's text")
    score.set_defaults(func=cmd_score)

    recommend = with_home(sub.add_parser("recommend", help="proposals from the champion policy with P(MET)"))
    recommend.add_argument("--country", required=True)
    recommend.add_argument("--arrangement", default=None)
    recommend.add_argument("--area", required=True)
    recommend.add_argument("-n", type=int, default=3, help="number of proposals")
    recommend.add_argument("--seed", type=int, default=0)
    recommend.set_defaults(func=cmd_recommend)

    summary = with_home(sub.add_parser("summary", help="print where a profile's results are"))
    summary.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
