"""The embedded default registry: MLflow on SQLite with a local artifact store under the hone home.

Layout of ``$HONE_HOME`` (default ``./hone-runs``)::

    mlflow.db           runs, metrics, parameters, logged models, registered models, versions, aliases
    mlflow.db.lock      serialises schema creation and version numbering between processes
    mlartifacts/        run artifacts (loss chart, reports) and logged models (the registered files)

A registration is one MLflow run (parameters, every step's metrics, evaluation metrics, the loss chart and
reports) with the model logged in MLflow's ``transformers`` format, registered as a version of the model name.
MLflow numbers versions itself (1, 2, ...); hone's version string (``1.0.0``) is the version's ``hone.version``
tag, and every lookup goes by that string. Any other MLflow URI works too (``http://mlflow:5000``), without the
cross-process lock.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from hone.errors import HoneError
from hone.registry.base import (ModelVersionInfo, RegisteredModelInfo, RegistryBase, check_alias, check_name,
                                check_version, duplicate, hone_home, not_found, write_registry_record)
from hone.layout import METRICS_FILE, PARAMS_FILE, RESULT_FILE, TrainingLayout
from hone.registry.lineage import Scalar, Source, flatten
from hone.secrets import scrub_mapping, scrub_text, secret_env_values

log = logging.getLogger("hone")

VERSION_TAG = "hone.version"          # hone's version string of an MLflow model version
TYPES_TAG = "hone.metadata_types"     # {key: int|float|bool} so metadata reads back with its types
RUN_DIR_TAG = "hone.run_dir"          # the training output directory a run belongs to
REGISTERED_TAG = "hone.registered"    # name:version registered from a run
_TEXT_SUFFIXES = {".json", ".jsonl", ".html", ".md", ".txt", ".yaml", ".yml", ".csv", ".log"}
_STEP_SKIP = {"step", "sample_ids"}
LOCK_TIMEOUT_S = 600  # a registration holds the lock for a few database writes; this long means a stuck process


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


def quiet_mlflow() -> None:
    """MLflow's INFO chatter (``Creating initial MLflow database tables...``, alembic's migrations, model
    logging) and artifact progress bars off, unless ``hone --verbose``. MLflow sets its logger's level when it
    is imported, so this imports it first."""
    import mlflow  # noqa: F401

    from hone.logs import is_verbose, quiet_logger

    if not is_verbose():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    quiet_logger("mlflow", "alembic", level=logging.ERROR)


@contextlib.contextmanager
def _store_errors(what: str, where: str) -> Iterator[None]:
    """MLflow/SQLAlchemy failures -> HoneError (secrets scrubbed from the message)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except HoneError:
        raise
    except MlflowException as err:
        raise HoneError(f"{what}: {scrub_text(err.message)}", where=where,
                        fix="check the store URI and that the store is reachable and writable") from None
    except Exception as err:  # sqlalchemy.exc.OperationalError, OSError, requests errors...
        if type(err).__module__.startswith(("sqlalchemy", "requests", "urllib3", "sqlite3")) or isinstance(err, OSError):
            raise HoneError(f"{what}: {scrub_text(str(err)).splitlines()[0]}", where=where,
                            fix="check the store URI and that the store is reachable and writable") from None
        raise


class MLflowRegistry(RegistryBase):
    """Model registry on MLflow (SQLite under the hone home unless another tracking URI is given)."""

    backend = "mlflow"

    def __init__(self, home: str | Path | None = None, tracking_uri: str | None = None,
                 experiment_name: str = "hone"):
        if home is None and tracking_uri and tracking_uri.startswith("sqlite:///"):
            home = Path(tracking_uri.removeprefix("sqlite:///")).parent  # artifacts next to the given database
        self.home = hone_home(home)
        self.tracking_uri = tracking_uri or sqlite_uri(self.home / "mlflow.db")
        self.experiment_name = experiment_name
        self._client = None

    # -- store ---------------------------------------------------------------------------------------
    @property
    def db_path(self) -> Path | None:
        """The SQLite file when the store is local SQLite (the only case with a cross-process lock)."""
        if self.tracking_uri.startswith("sqlite:///"):
            return Path(self.tracking_uri.removeprefix("sqlite:///"))
        return None

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlartifacts"

    def lock(self):
        """A file lock next to the SQLite file: one schema creation, one version numbering at a time."""
        if self.db_path is None:
            return contextlib.nullcontext()
        from filelock import FileLock

        return FileLock(str(self.db_path) + ".lock", timeout=LOCK_TIMEOUT_S)

    @property
    def where(self) -> str:
        return f"MLflow store {scrub_text(self.tracking_uri)}"

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            quiet_mlflow()
            if self.db_path is not None:
                self.db_path.parent.mkdir(parents=True, exist_ok=True)
            with _store_errors("cannot open the registry", self.where), self.lock():
                client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
                client.search_experiments(max_results=1)  # creates the schema of a new SQLite store
                client.search_registered_models(max_results=1)
            self._client = client
        return self._client

    def experiment_id(self, name: str | None = None) -> str:
        name = name or self.experiment_name
        client = self.client
        with _store_errors(f"cannot open experiment {name!r}", self.where):
            exp = client.get_experiment_by_name(name)
            if exp is None:
                with self.lock():
                    exp = client.get_experiment_by_name(name)
                    if exp is None:
                        location = None
                        if self.db_path is not None:
                            self.artifact_root.mkdir(parents=True, exist_ok=True)
                            location = self.artifact_root.as_uri()
                        return client.create_experiment(name, artifact_location=location)
        if exp.lifecycle_stage == "deleted":
            raise HoneError(f"MLflow experiment {name!r} is deleted", where=self.where,
                            fix="restore it in the MLflow UI or choose another experiment name")
        return exp.experiment_id

    # -- reading ---------------------------------------------------------------------------------------
    def _model_versions(self, name: str) -> list[Any]:
        from mlflow.exceptions import MlflowException

        client = self.client
        out, token = [], None
        with _store_errors(f"cannot list the versions of {name}", self.where):
            while True:
                try:
                    page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
                except MlflowException as err:
                    if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                        return []
                    raise
                out.extend(page)
                token = page.token
                if not token:
                    break
        return sorted(out, key=lambda mv: int(mv.version))

    def _find(self, name: str, version: str):
        versions = self._model_versions(name)
        for mv in versions:
            if mv.tags.get(VERSION_TAG) == version:
                return mv
        for mv in versions:  # versions registered outside hone: MLflow's own number
            if VERSION_TAG not in mv.tags and str(mv.version) == version:
                return mv
        return None

    def _aliases(self, name: str) -> dict[str, str]:
        """alias -> MLflow version number."""
        rm = self.client.get_registered_model(name)
        aliases = rm.aliases or {}
        return {a: str(v) for a, v in aliases.items()}

    def _info(self, mv, aliases: Mapping[str, str] | None = None) -> ModelVersionInfo:
        tags = dict(mv.tags or {})
        version = tags.pop(VERSION_TAG, None) or str(mv.version)
        types = json.loads(tags.pop(TYPES_TAG, "{}") or "{}")
        metadata = {k: _typed(v, types.get(k)) for k, v in tags.items() if not k.startswith("mlflow.")}
        aliases = self._aliases(mv.name) if aliases is None else aliases
        created = dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.timezone.utc).isoformat() \
            if mv.creation_timestamp else ""
        return ModelVersionInfo(
            name=mv.name, version=version, uri=self._download_uri(mv), metadata=metadata,
            aliases=sorted(a for a, v in aliases.items() if v == str(mv.version)), description=mv.description or "",
            author=mv.user_id or "", created=created, run_id=mv.run_id or None, backend=self.backend,
            backend_id=str(mv.version),
            details={k: v for k, v in (("mlflow_version", str(mv.version)), ("source", mv.source),
                                       ("logged_model_id", getattr(mv, "model_id", None)),
                                       ("tracking_uri", scrub_text(self.tracking_uri))) if v})

    def _download_uri(self, mv) -> str:
        try:
            return self.client.get_model_version_download_uri(mv.name, mv.version)
        except Exception:
            return mv.source or ""

    def get(self, name: str, version: str) -> ModelVersionInfo:
        check_name(name), check_version(version)
        mv = self._find(name, version)
        if mv is None:
            raise not_found(name, version)
        return self._info(mv)

    def get_by_alias(self, name: str, alias: str) -> ModelVersionInfo:
        from mlflow.exceptions import MlflowException

        check_name(name), check_alias(alias)
        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise not_found(name, alias=alias) from None
            raise
        return self._info(mv)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        check_alias(alias)
        mv = self._find(name, version)
        if mv is None:
            raise not_found(name, version)
        with _store_errors(f"cannot set alias {alias}", self.where):
            self.client.set_registered_model_alias(name, alias, mv.version)

    def list_models(self) -> list[RegisteredModelInfo]:
        client = self.client
        out, token = [], None
        with _store_errors("cannot list models", self.where):
            while True:
                page = client.search_registered_models(max_results=1000, page_token=token)
                out.extend(page)
                token = page.token
                if not token:
                    break
        models = []
        for rm in sorted(out, key=lambda r: r.name):
            versions = self._model_versions(rm.name)
            by_number = {str(mv.version): mv.tags.get(VERSION_TAG) or str(mv.version) for mv in versions}
            names = [by_number[str(mv.version)] for mv in versions]
            models.append(RegisteredModelInfo(
                name=rm.name, description=rm.description or "", versions=names,
                aliases={a: by_number.get(str(v), str(v)) for a, v in (rm.aliases or {}).items()},
                latest_version=names[-1] if names else None, backend=self.backend))
        return models

    def list_versions(self, name: str) -> list[ModelVersionInfo]:
        check_name(name)
        versions = self._model_versions(name)
        if not versions:
            return []
        aliases = self._aliases(name)
        return [self._info(mv, aliases) for mv in versions]

    # -- registering -----------------------------------------------------------------------------------
    def register(self, model_dir: str | Path | None, *, name: str, version: str, metadata: Mapping[str, Any],
                 description: str = "", aliases: Iterable[str] = (), run_dir: str | Path | None = None,
                 model_uri: str | None = None, source: Source | None = None,
                 artifacts: Iterable[Path] = ()) -> ModelVersionInfo:
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        check_name(name), check_version(version)
        aliases = [check_alias(a) for a in aliases]
        if "/" in name:
            raise HoneError(f"MLflow model names cannot contain '/': {name!r}", where="--name",
                            fix="use '-' or '_' instead (e.g. qwen2.5-1.5b-support)")
        if model_uri:
            raise HoneError("model_uri is for the Kubeflow registry; MLflow stores the model files itself",
                            where="--model-uri", fix="leave it out with the MLflow backend")
        model_dir = check_model_dir(model_dir)
        if self._find(name, version) is not None:
            raise duplicate(name, version)
        known = secret_env_values()
        meta = flatten(scrub_mapping(dict(metadata), known))
        description = scrub_text(description or "", known)
        client = self.client
        exp_id = self.experiment_id()
        run_dir = Path(run_dir).resolve() if run_dir else None

        staging = Path(tempfile.mkdtemp(prefix=".hone-register-", dir=self.home if self.db_path else None))
        run_id, own_run, logged = None, False, None
        try:
            with _store_errors(f"cannot register {name}:{version}", self.where):
                run_id = self._tracked_run(run_dir) if run_dir else None
                if run_id is None:
                    run = client.create_run(exp_id, run_name=f"{name}-{version}",
                                            tags={RUN_DIR_TAG: str(run_dir)} if run_dir else None)
                    run_id, own_run = run.info.run_id, True
                self._log_run(run_id, run_dir, meta, known, staging / "run", artifacts)
                client.set_tag(run_id, REGISTERED_TAG, f"{name}:{version}")
                last_step = _last_step(run_dir)

                logged = client.create_logged_model(exp_id, name="model", source_run_id=run_id, model_type="hone",
                                                    tags={VERSION_TAG: version, "hone.name": name})
                self._save_model(model_dir, staging / "model", run_id, logged)
                client.log_model_artifacts(logged.model_id, str(staging / "model"))
                client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=last_step)])

                tags = {k: _tag_text(v) for k, v in meta.items()}
                types = {k: type(v).__name__ for k, v in meta.items() if not isinstance(v, str)}
                tags.update({VERSION_TAG: version, TYPES_TAG: json.dumps(types, sort_keys=True)})
                with self.lock():  # the duplicate check and the version number, one process at a time
                    if self._find(name, version) is not None:
                        client.set_tag(run_id, REGISTERED_TAG, f"refused: {name}:{version} already registered")
                        raise duplicate(name, version)
                    if not client.search_registered_models(f"name = '{name}'", max_results=1):
                        client.create_registered_model(name)
                    # the logged model's own location: a models:/ source would be resolved through MLflow's
                    # global tracking URI, not this client's
                    mv = client.create_model_version(name, source=logged.artifact_location, run_id=run_id,
                                                     tags=tags, description=description or None,
                                                     model_id=logged.model_id, await_creation_for=0)
                    for alias in aliases:
                        client.set_registered_model_alias(name, alias, mv.version)
                # the files were all in place before the version existed: a version never points at half a model
                client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
            if own_run:
                client.set_terminated(run_id, "FINISHED")
        except BaseException:
            with contextlib.suppress(Exception):
                if logged is not None:
                    client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
                if own_run and run_id:
                    client.set_terminated(run_id, "FAILED")
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("registered %s:%s in %s (MLflow version %s, run %s)", name, version, self.where, mv.version, run_id)
        return self._info(client.get_model_version(name, mv.version))

    def _tracked_run(self, run_dir: Path) -> str | None:
        """The run a training's :class:`~hone.registry.tracking.MLflowTracker` logged, when it used this store."""
        if "'" in str(run_dir):
            return None
        client = self.client
        ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
        runs = client.search_runs(ids, f"tags.`{RUN_DIR_TAG}` = '{run_dir}'", max_results=1,
                                  order_by=["attributes.start_time DESC"]) if ids else []
        return runs[0].info.run_id if runs else None

    def _log_run(self, run_id: str, run_dir: Path | None, meta: Mapping[str, Scalar], known: list[str],
                 staging: Path, extra_artifacts: Iterable[Path]) -> None:
        """Parameters, every step's metrics, summary and evaluation metrics, lineage tags, charts and reports
        (only what the run does not hold yet: a tracked run already has its parameters and step metrics)."""
        from mlflow.entities import Metric, Param, RunTag

        client = self.client
        run = client.get_run(run_id)
        have_params, have_metrics = set(run.data.params), set(run.data.metrics)
        params: dict[str, Any] = {}
        if run_dir and (run_dir / PARAMS_FILE).is_file():
            params = scrub_mapping(json.loads((run_dir / PARAMS_FILE).read_text()), known)
        now = int(time.time() * 1000)
        param_list = [Param(k, _param_text(v)) for k, v in params.items() if k not in have_params]
        metrics: list[Metric] = []
        if run_dir and (run_dir / METRICS_FILE).is_file() and "loss" not in have_metrics:
            metrics += step_metrics(run_dir / METRICS_FILE, now)
        summary = {k: v for k, v in meta.items() if (k.startswith("eval_") or k in SUMMARY_METRICS)
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics += [Metric(k, float(v), now, 0) for k, v in summary.items()]
        tags = [RunTag(k, _tag_text(v)[:8000]) for k, v in meta.items()
                if k in LINEAGE_RUN_TAGS or k.startswith("pipeline_")]
        for i in range(0, max(len(param_list), 1), 100):
            chunk = param_list[i:i + 100]
            if chunk:
                client.log_batch(run_id, params=chunk)
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        if tags:
            client.log_batch(run_id, tags=tags)
        staged = stage_artifacts(run_dir, extra_artifacts, staging, known)
        if staged:
            client.log_artifacts(run_id, str(staging))

    def _save_model(self, model_dir: Path, dest: Path, run_id: str, logged) -> None:
        """The model in MLflow's transformers format (MLmodel, model/, components/tokenizer/), copied from the
        checkpoint directory: the weights are never loaded, so registering a large model needs no memory."""
        import mlflow.transformers
        import transformers
        from mlflow.models import Model

        quiet_mlflow()
        try:
            import torch

            torch_pin = [f"torch=={torch.__version__.split('+')[0]}"]
        except ImportError:  # pragma: no cover - hone depends on torch
            torch_pin = ["torch"]
        requirements = [f"transformers=={transformers.__version__}", *torch_pin, "safetensors", "tokenizers"]
        mlflow_model = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                             model_id=logged.model_id)
        try:
            with _pipeline_classes_by_name("text-generation"):
                mlflow.transformers.save_model(str(model_dir.resolve()), path=str(dest), task="text-generation",
                                               pip_requirements=requirements, model_card=_model_card(model_dir),
                                               mlflow_model=mlflow_model)
        except (OSError, ValueError) as err:
            raise HoneError(f"cannot save the model in MLflow's format: {scrub_text(str(err)).splitlines()[0]}",
                            where=str(model_dir), fix="pass a Hugging Face model directory with its tokenizer "
                                                      "(hf_format/final)") from None

    # -- downloading -------------------------------------------------------------------------------------
    def download(self, name: str, version: str, output_dir: str | Path) -> Path:
        """The version's files as a plain Hugging Face directory (model + tokenizer) in ``output_dir``,
        written atomically, with ``hone_registry.json`` describing the version."""
        import mlflow.artifacts

        from hone.io import atomic_dir

        info = self.get(name, version)
        out = Path(output_dir)
        if out.exists() and any(out.iterdir()):
            raise HoneError(f"output directory {out} is not empty", where="--output", fix="choose a new directory")
        with atomic_dir(out) as tmp:
            staging = tmp / ".mlflow"
            with _store_errors(f"cannot download {name}:{version}", self.where):
                raw = mlflow.artifacts.download_artifacts(artifact_uri=info.uri, dst_path=str(staging),
                                                          tracking_uri=self.tracking_uri)
            hf_layout(Path(raw), tmp)
            shutil.rmtree(staging)
            write_registry_record(tmp, info)
        return out


# Figures that become run metrics (besides every eval_* metric).
SUMMARY_METRICS = {"training_final_loss", "training_first_loss", "training_steps", "training_epochs_completed",
                   "training_samples_trained", "training_tokens_trained", "training_elapsed_s"}
LINEAGE_RUN_TAGS = {"hone_version", "base_model", "algorithm", "dataset_uri", "dataset_sha256"}


def check_model_dir(model_dir: str | Path | None) -> Path:
    if model_dir is None:
        raise HoneError("no model directory given", where="MODEL_DIR", fix="pass the model's directory")
    p = Path(model_dir)
    if not p.is_dir():
        raise HoneError(f"model directory not found: {p}", where="MODEL_DIR",
                        fix="pass a Hugging Face model directory, e.g. <run>/hf_format/final")
    if not (p / "config.json").is_file():
        if (p / "adapter_config.json").is_file():
            raise HoneError(f"{p} holds a LoRA adapter, not a whole model", where="MODEL_DIR",
                            fix="register the merged model (<run>/hf_format/final)")
        raise HoneError(f"{p} is not a Hugging Face model directory (no config.json)", where="MODEL_DIR",
                        fix="pass a Hugging Face model directory, e.g. <run>/hf_format/final")
    return p


def step_metrics(path: Path, timestamp: int) -> list[Any]:
    """Every numeric field of every line of training_metrics.jsonl as an MLflow metric at its step."""
    from mlflow.entities import Metric

    from hone.training.metrics import read_metrics

    out = []
    for record in read_metrics(path):
        step = int(record["step"])
        for key, value in record.items():
            if key not in _STEP_SKIP and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append(Metric(key, float(value), timestamp, step))
    return out


def stage_artifacts(run_dir: Path | None, extra: Iterable[Path], staging: Path, known: list[str]) -> list[Path]:
    """Copy the run's charts and reports into ``staging`` (text files with every secret masked)."""
    files: list[tuple[Path, str]] = []
    if run_dir:
        run = TrainingLayout(run_dir)
        for path in (run.loss_chart_png, run.loss_chart_html, run.params, run.result, run.metrics):
            if path.is_file():
                files.append((path, path.name))
        if run.data_report.is_file():
            files.append((run.data_report, "data_report.json"))
        for f in sorted(run_dir.iterdir()):
            if f.is_file() and ("report" in f.name or f.name.startswith("eval")) and all(f != s for s, _ in files):
                files.append((f, f.name))
    for f in extra:
        f = Path(f)
        if f.is_file():
            files.append((f, f"reports/{f.name}"))
    out = []
    for src, rel in files:
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix in _TEXT_SUFFIXES:
            dest.write_text(scrub_text(src.read_text(errors="replace"), known))
        else:
            shutil.copyfile(src, dest)
        out.append(dest)
    return out


def hf_layout(raw: Path, dest: Path) -> None:
    """MLflow's transformers layout (model/, components/tokenizer/) -> one Hugging Face directory."""
    parts = [raw / "model", raw / "components" / "tokenizer"]
    if not parts[0].is_dir():  # a version whose files are a plain directory already
        parts = [raw]
    for part in parts:
        if part.is_dir():
            for f in part.iterdir():
                if f.name != ".mlflow" and not (f.is_dir() and part == raw and f.name in ("model", "components")):
                    target = dest / f.name
                    if f.is_dir():
                        shutil.copytree(f, target, dirs_exist_ok=True)
                    else:
                        shutil.copy2(f, target)
    mlmodel = raw / "MLmodel"
    if mlmodel.is_file():
        (dest / "MLmodel.yaml").write_text(mlmodel.read_text())


@contextlib.contextmanager
def _pipeline_classes_by_name(task: str) -> Iterator[None]:
    """MLflow 3.17 logs a checkpoint directory by reading ``check_task(task)[1]["impl"].__name__``, but
    transformers 5 registers pipelines by dotted name (a str); for the duration of the save, the entry's impl
    is a stand-in class of that name (nothing else is read from it)."""
    try:
        from transformers.pipelines import PIPELINE_REGISTRY

        entry = PIPELINE_REGISTRY.supported_tasks.get(task)
    except Exception:  # noqa: BLE001 - another transformers layout: nothing to adapt
        entry = None
    impl = entry.get("impl") if isinstance(entry, dict) else None
    if not isinstance(impl, str):
        yield
        return
    module, _, name = impl.rpartition(".")
    entry["impl"] = type(name, (), {"__module__": module})
    try:
        yield
    finally:
        entry["impl"] = impl


def _model_card(model_dir: Path):
    """The model's README as its card (no hub lookup: MLflow would otherwise query the hub)."""
    from huggingface_hub import ModelCard

    readme = model_dir / "README.md"
    if readme.is_file():
        with contextlib.suppress(Exception):
            return ModelCard.load(str(readme))
    return ModelCard("---\nlibrary_name: transformers\ntags:\n- hone\n---\nFine-tuned with hone.\n")


def _last_step(run_dir: Path | None) -> int:
    if run_dir and (run_dir / RESULT_FILE).is_file():
        with contextlib.suppress(Exception):
            return int(json.loads((run_dir / RESULT_FILE).read_text()).get("steps") or 0)
    return 0


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def _tag_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, bool) else str(value)


def _typed(text: str, kind: str | None) -> Scalar:
    try:
        if kind == "bool":
            return text == "true"
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        pass
    return text
