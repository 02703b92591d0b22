"""FiftyOne App operators. They read parameters and call the SDK; no logic.

Headless, ``resolve_input`` defaults are not applied, so every ``execute``
reads its parameters with the same defaults as its form.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_ai_search as ais
from fiftyone_ai_search.config import BACKENDS


def _secrets(ctx):
    return {k: v for k, v in (ctx.secrets or {}).items() if v}


def _jsonable(status):
    """Dates as ISO strings, so the App can show the status."""
    out = {}
    for key, value in status.items():
        if isinstance(value, dict):
            value = _jsonable(value)
        elif hasattr(value, "isoformat"):
            value = value.isoformat()
        out[key] = value
    return out


def _status_view(ctx, inputs_or_outputs):
    status = ais.get_status(ctx.dataset)
    if not status["enabled"]:
        text = "AI search is off for this dataset."
    elif status["in_progress"]:
        p = status.get("progress") or {}
        text = f"Computing embeddings: {p.get('done', 0)} / {p.get('total', '?')}"
    else:
        c = status["counts"]
        text = (
            f"Ready: {c['num_indexed']} of {c['num_samples']} samples indexed"
            f" with {status['model']}, {c['num_failed']} failed."
        )
    inputs_or_outputs.view("status", types.Notice(label=text))
    return status


class EnableAISearch(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="enable_ai_search",
            label="AI search: enable",
            description="Embed this dataset's images with CLIP and keep them "
            "in sync, so it can be searched by prompt and example",
            icon="travel_explore",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        settings = ais.get_settings()
        inputs.str(
            "model",
            label="Model",
            description="An open_clip model name or local-dir:/path",
            default=settings.model,
        )
        inputs.str(
            "pretrained",
            label="Pretrained",
            description="An open_clip tag or a local weights file",
            default=settings.pretrained,
        )
        inputs.enum(
            "backend",
            list(BACKENDS),
            label="Index",
            description="edge: embedded, nothing to run; server: a Qdrant "
            "server (URL and API key from plugin secrets)",
            default=settings.backend,
        )
        return types.Property(inputs, view=types.View(label="Enable AI search"))

    def execute(self, ctx):
        status = ais.enable_embeddings(
            ctx.dataset,
            model=ctx.params.get("model") or None,
            pretrained=ctx.params.get("pretrained") or None,
            backend=ctx.params.get("backend") or None,
            secrets=_secrets(ctx),
        )
        return _jsonable(status)


class DisableAISearch(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="disable_ai_search",
            label="AI search: disable",
            description="Delete this dataset's AI search index",
            icon="search_off",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view(
            "warning",
            types.Warning(
                label="This deletes the dataset's embeddings index. "
                "Re-enabling computes it again."
            ),
        )
        return types.Property(inputs, view=types.View(label="Disable AI search"))

    def execute(self, ctx):
        ais.disable_embeddings(ctx.dataset)
        return {"enabled": False}


class ComputeEmbeddings(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="compute_embeddings",
            label="AI search: compute embeddings",
            description="Embed new and changed samples, remove deleted ones",
            icon="sync",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.bool(
            "force",
            label="Rebuild",
            description="Embed every sample again from scratch",
            default=False,
        )
        inputs.bool(
            "verify_files",
            label="Check every file",
            description="Also find images overwritten on disk",
            default=False,
        )
        return types.Property(
            inputs, view=types.View(label="Compute embeddings")
        )

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate", None)

    def execute(self, ctx):
        force = bool(ctx.params.get("force", False))
        verify_files = bool(ctx.params.get("verify_files", False))
        if not ctx.delegated:
            # immediate: hand the work to a background worker, return at once
            ais.calculate_embeddings(
                ctx.dataset, force=force, verify_files=verify_files,
                wait=False, secrets=_secrets(ctx),
            )
            return {"started": True}

        def progress(done, total):
            ctx.set_progress(
                progress=done / total if total else 1.0,
                label=f"Embedded {done} / {total}",
            )

        report = ais.calculate_embeddings(
            ctx.dataset, force=force, verify_files=verify_files, wait=True,
            progress=progress, secrets=_secrets(ctx),
        )
        return report.to_dict()


class AISearchStatus(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="ai_search_status",
            label="AI search: status",
            icon="info",
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _status_view(ctx, inputs)
        return types.Property(inputs, view=types.View(label="AI search status"))

    def execute(self, ctx):
        return _jsonable(ais.get_status(ctx.dataset))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.obj("counts", label="Counts", view=types.JSONView())
        outputs.list("failures", types.Object(), label="Failures",
                     view=types.JSONView())
        return types.Property(outputs)


OPERATORS = (EnableAISearch, DisableAISearch, ComputeEmbeddings, AISearchStatus)
