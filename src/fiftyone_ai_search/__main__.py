"""Command line of AI search for FiftyOne: ``fiftyone-ai-search <command>``
(or ``python -m fiftyone_ai_search <command>``).

Each command is a thin layer over the Python SDK (``import
fiftyone_ai_search as ais``): it parses, calls the SDK and prints. Mistakes
(a dataset that does not exist, AI search off, a bad argument) print one line
``fiftyone-ai-search: error: ...`` on stderr and exit with status 2.
"""

import argparse
import json
import logging
import signal
import sys
from importlib.metadata import PackageNotFoundError, version

import fiftyone_ai_search as ais

from .embeddings import forget_deleted, maintain_index
from .errors import AISearchError, SyncCancelled
from .index import state as st
from .index.state import dataset_exists, dataset_key
from .index.targets import target_of
from .scheduler import Refresher, refresh_all
from .words import counted

PROG = "fiftyone-ai-search"

DESCRIPTION = """\
AI search for FiftyOne: CLIP embeddings of a dataset's images in a Qdrant
index that keeps itself in sync; search by prompt, by similar samples or for
a diverse spread, and keep the results as collections (saved views).
"""

EPILOG = """\
examples:
  fiftyone-ai-search demo
  fiftyone-ai-search enable my-images --wait
  fiftyone-ai-search status my-images
  fiftyone-ai-search search my-images "a red car" --limit 20
  fiftyone-ai-search search my-images --similar SAMPLE_ID --save "like it"
  fiftyone-ai-search search my-images --diverse centroids --limit 50
  fiftyone-ai-search collections list my-images
  fiftyone-ai-search collections show my-images "like it" --json
  fiftyone-ai-search refresher --interval-minutes 10
  fiftyone-ai-search disable my-images

Each command has its own --help.
"""

# what sync and refresher print on stdout; their log lines of the same
# reports (on stderr) would say it a second time
_REPORTED = ("AI search sync of '%s': %s", "AI search refresh: %s")


class CommandError(Exception):
    """A mistake of the caller: one line on stderr, exit status 2."""


class _DropReported(logging.Filter):
    def filter(self, record):
        return record.msg not in _REPORTED


def _version():
    try:
        return version("fiftyone-ai-search")
    except PackageNotFoundError:  # a source tree that is not installed
        return ais.__version__


def _load_dataset(name=None, dataset_id=None):
    import fiftyone as fo  # start-up: --help never loads FiftyOne

    if dataset_id is not None:
        dataset = st.load_dataset(dataset_id)
        if dataset is None:
            raise CommandError(f"no dataset with id {dataset_id}")
        return dataset

    if not fo.dataset_exists(name):
        raise CommandError(
            f"dataset '{name}' does not exist (`fiftyone datasets list` "
            "lists them)")
    return fo.load_dataset(name)


def _enabled_dataset(name, patches_field=None, frames=False):
    """The dataset ``name``, whose AI search (of ``patches_field``, or of
    its videos' frames with ``frames``) is on."""
    dataset = _load_dataset(name)
    if frames:
        if not ais.get_status(dataset, frames=True,
                              counts=False).get("enabled"):
            raise CommandError(
                f"frame search is off for dataset '{name}'; switch it on "
                f"with `{PROG} enable {name} --frames`")
        return dataset
    status = ais.get_status(dataset, counts=False)
    if not status.get("enabled"):
        raise CommandError(f"AI search is off for dataset '{name}'; switch "
                           f"it on with `{PROG} enable {name}`")
    if patches_field and patches_field not in status["object_fields"]:
        raise CommandError(
            f"object search of field '{patches_field}' is off for dataset "
            f"'{name}'; switch it on with `{PROG} enable {name} "
            f"--patches-field {patches_field}`")
    return dataset


def _print_json(value):
    print(json.dumps(value, indent=2, default=str))


def _cmd_sync(args):
    dataset = _load_dataset(args.dataset, args.dataset_id)
    frames = getattr(args, "frames", False)
    target = target_of(dataset, args.patches_field, frames=frames)
    name, key = dataset.name, dataset_key(target)
    try:
        report = ais.calculate_embeddings(
            dataset,
            patches_field=args.patches_field,
            frames=frames,
            force=args.force,
            verify_files=args.verify_files,
            wait=True,
            progress=not args.quiet,
        )
        # the target names itself: "objects of 'gt' of dataset 'x'"
        print(f"AI search sync of the {target}: {report}")
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
        forget_deleted(key)
        print(f"AI search sync of '{name}' stopped: dataset '{name}' was "
              "deleted; removed its index")
        return
    if assigned:
        print(f"AI search index of '{name}': {assigned} points "
              "given their cell of the approximate search")


def _cmd_enable(args):
    dataset = _load_dataset(args.dataset)
    what = _what(args)
    status = ais.enable_embeddings(
        dataset, model=args.model, pretrained=args.pretrained,
        backend=args.backend, patches_field=args.patches_field,
        frames=args.frames, compute=not (args.wait or args.no_compute),
    )
    model = status.get("model")
    print(f"AI search is on for {what} (model {model}, "
          f"{status.get('backend')} index)")
    if args.wait:
        report = ais.calculate_embeddings(
            dataset, patches_field=args.patches_field, frames=args.frames,
            wait=True, progress=not args.quiet)
        print(f"AI search sync of {what}: {report}")
    elif args.no_compute:
        print(f"Nothing computed yet: `{PROG} sync --dataset "
              f"{args.dataset}{_target_args(args)}` computes the "
              "embeddings")
    else:
        print(f"Computing the embeddings in the background: `{PROG} status "
              f"{args.dataset}{_target_args(args)}` follows it")


def _what(args):
    field = getattr(args, "patches_field", None)
    if field:
        return f"the objects of '{field}' of dataset '{args.dataset}'"
    if getattr(args, "frames", False):
        return f"the frames of dataset '{args.dataset}'"
    return f"dataset '{args.dataset}'"


def _target_args(args):
    """The options that name the index a command was given (for the
    commands a message suggests next): ``" --frames"``, ``""``..."""
    field = getattr(args, "patches_field", None)
    if field:
        return f" --patches-field {field}"
    return " --frames" if getattr(args, "frames", False) else ""


def _cmd_disable(args):
    dataset = _enabled_dataset(args.dataset, args.patches_field, args.frames)
    ais.disable_embeddings(dataset, patches_field=args.patches_field,
                           frames=args.frames)
    print(f"AI search is off for {_what(args)}: its index is deleted "
          "(named collections stay, as saved views)")


def _cmd_status(args):
    dataset = _load_dataset(args.dataset)
    status = ais.get_status(dataset, patches_field=args.patches_field,
                            frames=args.frames,
                            max_failures=args.max_failures)
    if args.json:
        _print_json(status)
        return
    if not status.get("enabled"):
        print(f"AI search: off for {_what(args)}")
        return
    rows = status_rows(status, _what(args))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")
    for failure in status.get("failures") or []:
        where = failure.get("filepath") or failure.get("label_id")
        print(f"failed: {where}: {failure.get('reason')}")


def _model_of(values):
    """``"ViT-B-32 / laion2b_s34b_b79k"`` of a status's (or its index
    reference's) ``model`` and ``pretrained``."""
    return " / ".join(str(values[k]) for k in ("model", "pretrained")
                      if values.get(k))


def status_rows(status, what):
    """The ``(name, value)`` rows that ``status`` prints of an enabled
    index's :func:`fiftyone_ai_search.get_status` (``what``: the index's
    dataset, the objects of its field or its videos' frames, in words)."""
    rows = [("AI search", f"on for {what}"), ("model", _model_of(status)),
            ("backend", status.get("backend"))]
    if status.get("in_progress"):
        p = st.Progress.from_doc(status.get("progress")) or st.Progress()
        total = "?" if p.total is None else p.total
        computing = f"{p.done} of {total}"
        if p.frames is not None:  # a frame index counts videos, and frames
            computing += f" videos, {counted(p.frames, 'frame')}"
        rows.append(("computing", computing))
    if status.get("rebuild"):
        rows.append(("rebuilding with", _model_of(status["rebuild"])))
    if status.get("sampling"):  # a frame index's rule
        rows.append(("sampling", ", ".join(
            f"{k.replace('_', ' ')} {v}"
            for k, v in status["sampling"].items() if v is not None)))
    counts = status.get("counts") or {}
    rows.append(("counts", _pairs(counts)))
    if status.get("last_report"):
        rows.append(("last report", _pairs(status["last_report"])))
    rows += [(k.replace("_", " "), status.get(k)) for k in
             ("updated_at", "last_error", "index_error") if status.get(k)]
    if status.get("object_fields"):
        rows.append(("object search of", ", ".join(status["object_fields"])))
    return rows


def _pairs(values):
    """``{"num_added": 3, "rebuilt": True, "seconds": 1.23}`` as ``added 3,
    rebuilt in 1.2 s``: a flag by its name where it is true, left out
    where it is not."""
    text = ", ".join(
        k.replace("num_", "") if v is True else f"{k.replace('num_', '')} {v}"
        for k, v in values.items() if k != "seconds" and v is not False)
    if "seconds" in values:
        text += f" in {values['seconds']:.1f} s"
    return text


def _cmd_search(args):
    dataset = _enabled_dataset(args.dataset, args.patches_field)
    samples = dataset
    if args.view:
        if not dataset.has_saved_view(args.view):
            raise CommandError(f"dataset '{args.dataset}' has no saved view "
                               f"'{args.view}'")
        samples = dataset.load_saved_view(args.view)
    ids = {"label_id" if args.patches_field else "image_id": args.similar}
    name = ais.perform_ai_search(
        samples, prompt=args.prompt, image=args.image, method=args.diverse,
        negative_prompt=args.negative, limit=args.limit,
        threshold=args.threshold, clustering_method=args.clustering,
        num_clusters=args.num_clusters, seed=args.seed,
        patches_field=args.patches_field, **ids)
    if name is None:
        if args.json:
            _print_json({"collection": None, "results": []})
        else:
            print("Nothing matched (the latest results are unchanged)",
                  file=sys.stderr)
        return
    if args.save:
        name = ais.save_collection(dataset, args.save,
                                   overwrite=args.overwrite)
    _print_results(dataset, name, args)


def _print_results(dataset, name, args, min_score=None, max_score=None):
    """The rows of collection ``name``: score, id and file, best first."""
    view = ais.get_collection(dataset, name, min_score=min_score,
                              max_score=max_score)
    if args.limit:
        view = view.limit(args.limit)
    ids, paths = view.values(["id", "filepath"])
    scores = dict(ais.get_collection_scores(dataset, name))
    rows = [{"id": i, "score": scores.get(i), "filepath": p}
            for i, p in zip(ids, paths)]
    if args.json:
        _print_json({"collection": name, "results": rows})
        return
    for row in rows:
        if args.paths:
            print(row["filepath"])
        else:
            print(f"{row['score']:.4f}  {row['id']}  {row['filepath']}")
    if not args.paths:
        print(f"{counted(len(rows), 'result')} in collection '{name}' of "
              f"dataset '{dataset.name}'", file=sys.stderr)


def _cmd_collections_list(args):
    rows = ais.list_collections(_load_dataset(args.dataset))
    if args.json:
        _print_json(rows)
        return
    for row in rows:
        # an uploaded image was not kept: its file name stands for it
        query = ", ".join(f"{k}={v}" for k, v in (row["query"] or {}).items()
                          if v is not None and k in (
                              "prompt", "image_id", "method", "image",
                              "image_name", "label_id", "score_range"))
        objects = f" (objects of {row['patches_field']})" \
            if row.get("patches_field") else ""
        print(f"{row['name']}: {counted(row['size'], 'result')}{objects}, "
              f"{row['created_at']:%Y-%m-%d %H:%M}"
              + (f", {query}" if query else ""))
    if not rows:
        print(f"dataset '{args.dataset}' has no AI search collections",
              file=sys.stderr)


def _cmd_collections_show(args):
    dataset = _load_dataset(args.dataset)
    _print_results(dataset, args.name, args, args.min_score, args.max_score)


def _cmd_collections_save(args):
    dataset = _load_dataset(args.dataset)
    name = ais.save_collection(dataset, args.name, source=args.source,
                               overwrite=args.overwrite,
                               min_score=args.min_score,
                               max_score=args.max_score)
    print(f"Saved collection '{name}' of dataset '{args.dataset}'")


def _cmd_collections_rename(args):
    ais.rename_collection(_load_dataset(args.dataset), args.name,
                          args.new_name)
    print(f"Renamed collection '{args.name}' of dataset '{args.dataset}' to "
          f"'{args.new_name}'")


def _cmd_collections_delete(args):
    ais.delete_collection(_load_dataset(args.dataset), args.name)
    print(f"Deleted collection '{args.name}' of dataset '{args.dataset}'")


def _cmd_refresher(args):
    for name in args.dataset or ():
        # a mistyped name would otherwise be a pass over nothing
        if args.once:
            _enabled_dataset(name)
        else:
            _load_dataset(name)

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
    from .demo.quickstart import run_demo  # start-up: PIL, for the demo only

    run_demo(name=args.name, num_samples=args.num_samples,
             images_dir=args.images_dir)


def _cmd_install_plugin(args):
    from .app.install import install_plugin  # start-up: PyYAML

    path = install_plugin(plugins_dir=args.plugins_dir)
    print(f"Installed the AI search plugin at {path}")


def _add_dataset(p):
    p.add_argument("dataset", help="the dataset's name")


def _add_patches_field(p, what):
    p.add_argument("--patches-field", metavar="FIELD", default=None,
                   help=f"{what} of the objects of this label field "
                        "(Detections, Polylines or Keypoints), not of the "
                        "images")


def _add_target(p, what):
    """``--patches-field FIELD`` or ``--frames``: which index of the
    dataset a command is about (its images without either), as the SDK's
    ``patches_field=`` and ``frames=True``."""
    target = p.add_mutually_exclusive_group()
    _add_patches_field(target, what)
    target.add_argument("--frames", action="store_true",
                        help=f"{what} of the frames of the videos of a "
                             "video dataset (or of a grouped dataset's "
                             "video slices), not of the images")


def _add_json(p, what):
    p.add_argument("--json", action="store_true",
                   help=f"print {what} as JSON, for scripts")


def _add_results_output(p):
    _add_json(p, "the results")
    p.add_argument("--paths", action="store_true",
                   help="print only the file paths, one a line (e.g. for "
                        "xargs)")


def _add_score_range(p, what):
    p.add_argument("--min-score", type=float, default=None,
                   help=f"{what} only results scoring >= this, in [-1, 1]")
    p.add_argument("--max-score", type=float, default=None,
                   help=f"{what} only results scoring <= this, in [-1, 1]")


def _parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="COMMAND")

    p = sub.add_parser("demo", help="run the offline demo on synthetic shapes")
    p.add_argument("--name", default="ai-search-demo",
                   help="the demo dataset's name, replaced if it exists "
                        "(default: %(default)s)")
    p.add_argument("--num-samples", type=int, default=300,
                   help="how many shape images (default: %(default)s)")
    p.add_argument("--images-dir", default=None,
                   help="where to write the images (default: in FiftyOne's "
                        "dataset directory)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "enable", help="switch AI search on for a dataset and compute its "
                       "embeddings")
    _add_dataset(p)
    p.add_argument("--model", default=None,
                   help="an open_clip model name, or local-dir:/path of a "
                        "checkpoint (default: the model in use, else "
                        "ViT-B-32)")
    p.add_argument("--pretrained", default=None,
                   help="an open_clip pretrained tag, or a local weights "
                        "file (default: laion2b_s34b_b79k for ViT-B-32)")
    p.add_argument("--backend", choices=("edge", "server"), default=None,
                   help="edge: the embedded index (default); server: the "
                        "Qdrant server of FIFTYONE_AI_SEARCH_QDRANT_URL")
    _add_target(p, "switch on the index")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--wait", action="store_true",
                      help="compute the embeddings here, with a progress "
                           "bar, and print the report (default: a "
                           "background worker computes them)")
    when.add_argument("--no-compute", action="store_true",
                      help="compute nothing yet (see the sync command)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (with --wait)")
    p.set_defaults(func=_cmd_enable)

    p = sub.add_parser("disable", help="switch AI search off for a dataset "
                                       "(deletes its index)")
    _add_dataset(p)
    _add_target(p, "switch off the index")
    p.set_defaults(func=_cmd_disable)

    p = sub.add_parser("status", help="print a dataset's AI search status")
    _add_dataset(p)
    _add_target(p, "the status of the index")
    p.add_argument("--max-failures", type=int, default=10,
                   help="the most failed samples to list (default: "
                        "%(default)s)")
    _add_json(p, "the full status")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "search",
        help="search by prompt, by similar samples, by an image, or for a "
             "diverse spread; the results are the dataset's latest results "
             "collection",
        description="Search a dataset and print the results, best first "
                    "(score, id, file). They are kept as the dataset's "
                    "latest results collection ('AI search results'), "
                    "replaced by the next search; --save keeps them under a "
                    "name.")
    _add_dataset(p)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("prompt", nargs="?", default=None,
                       help="what to find, in words (commas separate "
                            "several prompts)")
    query.add_argument("--similar", nargs="+", metavar="ID", default=None,
                       help="sample ids (label ids with --patches-field): "
                            "find more like these")
    query.add_argument("--image", metavar="PATH", default=None,
                       help="an image file from outside the dataset: find "
                            "images like it")
    query.add_argument("--diverse", choices=("centroids", "random"),
                       default=None,
                       help="a diverse spread of the dataset, no query: the "
                            "most typical (centroids) or random members of "
                            "each cluster")
    p.add_argument("--negative", metavar="PROMPT", default=None,
                   help="what to push away (with a prompt)")
    p.add_argument("--limit", "-n", type=int, default=20,
                   help="the most results (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=None,
                   help="only results scoring >= this, in [-1, 1]")
    p.add_argument("--clustering", choices=("kmeans", "dbscan"), default=None,
                   help="how --diverse clusters (default: kmeans)")
    p.add_argument("--num-clusters", type=int, default=None,
                   help="the k-means cluster count of --diverse (default: "
                        "one a result, up to 100)")
    p.add_argument("--seed", type=int, default=0,
                   help="the random seed of --diverse (default: "
                        "%(default)s)")
    p.add_argument("--view", metavar="SAVED_VIEW", default=None,
                   help="search within this saved view of the dataset")
    _add_patches_field(p, "search the index")
    p.add_argument("--save", metavar="NAME", default=None,
                   help="also keep the results as the collection NAME")
    p.add_argument("--overwrite", action="store_true",
                   help="with --save: replace a collection of that name")
    _add_results_output(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "collections",
        help="list, show, save, rename or delete the kept search "
             "results")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = csub.add_parser("list", help="the dataset's collections")
    _add_dataset(c)
    _add_json(c, "them")
    c.set_defaults(func=_cmd_collections_list)

    c = csub.add_parser("show", help="the results of a collection, best "
                                     "first")
    _add_dataset(c)
    c.add_argument("name", help="the collection's name ('AI search "
                                "results': the latest search)")
    c.add_argument("--limit", "-n", type=int, default=None,
                   help="the most results to print (default: all)")
    _add_score_range(c, "print")
    _add_results_output(c)
    c.set_defaults(func=_cmd_collections_show)

    c = csub.add_parser("save", help="keep the latest results (or a score "
                                     "range of them) under a name")
    _add_dataset(c)
    c.add_argument("name", help="the new collection's name")
    c.add_argument("--source", default="AI search results",
                   help="the collection to copy (default: %(default)s)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace a collection of that name")
    _add_score_range(c, "keep")
    c.set_defaults(func=_cmd_collections_save)

    c = csub.add_parser("rename", help="rename a collection")
    _add_dataset(c)
    c.add_argument("name", help="the collection's name")
    c.add_argument("new_name", help="its new name")
    c.set_defaults(func=_cmd_collections_rename)

    c = csub.add_parser("delete", help="delete a collection (its saved "
                                       "view and its scores)")
    _add_dataset(c)
    c.add_argument("name", help="the collection's name")
    c.set_defaults(func=_cmd_collections_delete)

    p = sub.add_parser("sync", help="synchronise a dataset's index (what "
                                    "the background worker runs)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--dataset", help="dataset name")
    group.add_argument("--dataset-id", help="dataset id")
    _add_target(p, "sync the index")
    p.add_argument("--force", action="store_true", help="rebuild the index")
    p.add_argument("--verify-files", action="store_true",
                   help="check every file's fingerprint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sync)

    p = sub.add_parser(
        "refresher",
        help="keep every enabled dataset's index in sync, on a schedule",
    )
    p.add_argument("--interval-minutes", type=int, default=None,
                   help="1-1440; default FIFTYONE_AI_SEARCH_REFRESH_MINUTES "
                        "(10)")
    p.add_argument("--once", action="store_true",
                   help="run one pass and exit (e.g. from cron); exit "
                        "status 1 if a dataset failed")
    p.add_argument("--dataset", action="append", default=None,
                   help="only this dataset (repeatable); default: every "
                        "dataset whose AI search is on")
    p.set_defaults(func=_cmd_refresher)

    p = sub.add_parser("install-plugin",
                       help="make the FiftyOne App find this plugin")
    p.add_argument("--plugins-dir", default=None,
                   help="default: FiftyOne's plugins_dir")
    p.set_defaults(func=_cmd_install_plugin)
    return parser


def _is_mistake(error):
    """Whether ``error`` is the caller's mistake or a refusal the package
    explains (one line), not a bug (a traceback)."""
    return isinstance(error, (CommandError, AISearchError, ValueError))


def main(argv=None):
    """Runs the command line; returns the exit status (2: a mistake, said
    in one line on stderr)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(message)s")
    package_logger = logging.getLogger("fiftyone_ai_search")
    level = package_logger.level
    handlers = list(logging.getLogger().handlers)
    if args.command in ("sync", "refresher"):  # their logs say what they did
        package_logger.setLevel(logging.INFO)
    if args.command == "sync" or getattr(args, "once", False):
        for handler in handlers:  # what they print, said once
            handler.addFilter(_DropReported())
    try:
        return args.func(args) or 0
    except Exception as e:
        if not _is_mistake(e):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.command != "refresher" or args.once:
            # (the service's last pass may still run, and log, past here)
            package_logger.setLevel(level)
        for handler in handlers:
            for f in [f for f in handler.filters
                      if isinstance(f, _DropReported)]:
                handler.removeFilter(f)


if __name__ == "__main__":
    sys.exit(main())
