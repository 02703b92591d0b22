"""Command line: ``python -m fiftyone_ai_search <command>``.

Commands:
    demo            build the synthetic shapes dataset, enable AI search with
                    the bundled tiny CLIP, compute embeddings, show status
    sync            synchronise one dataset's index (the background worker)
    status          print a dataset's AI search status
    refresher       keep every enabled dataset's index in sync, on a schedule
    install-plugin  make FiftyOne's App find this plugin (pip installs)
"""

import argparse
import json
import logging
import signal
import sys


def _load_dataset(name=None, dataset_id=None):
    import fiftyone as fo

    if dataset_id is not None:
        from . import state as st

        dataset = st.load_dataset(dataset_id)
        if dataset is None:
            raise SystemExit(f"No dataset with id {dataset_id}")
        return dataset

    return fo.load_dataset(name)


def _cmd_sync(args):
    import fiftyone_ai_search as ais

    from .sync import SyncCancelled

    dataset = _load_dataset(args.dataset, args.dataset_id)
    from .targets import target_of

    from .runner import maintain_index
    from .state import dataset_exists, dataset_key

    target = target_of(dataset, args.patches_field)
    name, key = dataset.name, dataset_key(target)
    try:
        report = ais.calculate_embeddings(
            dataset,
            patches_field=args.patches_field,
            force=args.force,
            verify_files=args.verify_files,
            wait=True,
            progress=not args.quiet,
        )
        print(f"AI search sync of '{name}': {report}")
        # after the sync, so that nobody waits for it (see maintain_index)
        assigned = maintain_index(target)
    except SyncCancelled as e:
        # switched off meanwhile: nothing is left to do, and no error
        print(f"AI search sync of '{name}' stopped: {e}")
        return
    except Exception:
        if dataset_exists(key):
            raise
        # deleted meanwhile (whatever failed for it): nothing is left to
        # do but to remove what AI search kept of it, and no error
        from .embeddings import forget_deleted

        forget_deleted(key)
        print(f"AI search sync of '{name}' stopped: dataset '{name}' was "
              "deleted; removed its index")
        return
    if assigned:
        print(f"AI search index of '{name}': {assigned} points "
              "given their cell of the approximate search")


def _cmd_status(args):
    import fiftyone_ai_search as ais

    dataset = _load_dataset(args.dataset)
    print(json.dumps(ais.get_status(dataset), indent=2, default=str))


def _cmd_refresher(args):
    from .scheduler import Refresher, refresh_all

    if args.once:
        report = refresh_all(args.dataset)
        for name, sync_report in report.synced.items():
            print(f"'{name}': {sync_report}")
        for name, error in report.errors.items():
            print(f"'{name}': {error}")
        print(f"AI search refresh: {report}")
        return 1 if report.errors else 0

    # SIGTERM (a service manager) stops the schedule like Ctrl-C; a pass in
    # progress ends with its current batch committed either way
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Refresher(args.interval_minutes, args.dataset).start(blocking=True)
    return 0


def _cmd_demo(args):
    from .demo.quickstart import run_demo

    run_demo(name=args.name, num_samples=args.num_samples,
             images_dir=args.images_dir)


def _cmd_install_plugin(args):
    from .app.install import install_plugin

    path = install_plugin(plugins_dir=args.plugins_dir)
    print(f"Installed the AI search plugin at {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="fiftyone-ai-search", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the offline demo on synthetic shapes")
    p.add_argument("--name", default="ai-search-demo")
    p.add_argument("--num-samples", type=int, default=300)
    p.add_argument("--images-dir", default=None)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("sync", help="synchronise a dataset's index")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--dataset", help="dataset name")
    group.add_argument("--dataset-id", help="dataset id")
    p.add_argument("--patches-field", default=None,
                   help="sync the object index of this label field")
    p.add_argument("--force", action="store_true", help="rebuild the index")
    p.add_argument("--verify-files", action="store_true",
                   help="check every file's fingerprint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sync)

    p = sub.add_parser("status", help="print a dataset's AI search status")
    p.add_argument("dataset", help="dataset name")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "refresher",
        help="keep every enabled dataset's index in sync, on a schedule",
    )
    p.add_argument("--interval-minutes", type=int, default=None,
                   help="1-1440; default FIFTYONE_AI_SEARCH_REFRESH_MINUTES "
                        "(10)")
    p.add_argument("--once", action="store_true",
                   help="run one pass and exit (e.g. from cron)")
    p.add_argument("--dataset", action="append", default=None,
                   help="only this dataset (repeatable); default: every "
                        "dataset whose AI search is on")
    p.set_defaults(func=_cmd_refresher)

    p = sub.add_parser("install-plugin",
                       help="make the FiftyOne App find this plugin")
    p.add_argument("--plugins-dir", default=None,
                   help="default: FiftyOne's plugins_dir")
    p.set_defaults(func=_cmd_install_plugin)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    if args.command in ("sync", "refresher"):  # their logs say what they did
        logging.getLogger("fiftyone_ai_search").setLevel(logging.INFO)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
