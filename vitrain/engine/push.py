"""``vitrain push RUN --repo USER/NAME``: upload a run's export and model card to the Hugging Face Hub."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..checkpoint import load_model, resolve_checkpoint_path
from .card import model_card, read_run
from .hub_export import FolderExportError, export_folder


class PushError(RuntimeError):
    """The upload cannot start: a bad repository name, no token, or no huggingface_hub."""


def push_run(
    run: str | Path,
    repo: str,
    *,
    fmt: str = "hf",
    license: str | None = None,
    private: bool = False,
    token: str | None = None,
    log=print,
) -> str:
    """Export ``run`` as ``fmt`` with its model card and upload it to the Hub repository ``repo``.

    The repository is created when missing (``private`` if asked); an earlier push's model and
    config files that this export does not write are deleted. The token is ``token``, else
    ``HF_TOKEN``, else the one ``hf auth login`` stored. Returns the repository's URL.
    """
    try:
        from huggingface_hub import HfApi, get_token
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        raise PushError("vitrain push needs huggingface_hub: pip install 'vitrain[hub]'") from None
    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise PushError(f"--repo {repo!r} is not a Hub repository name: {err}") from None
    if "/" not in repo:
        raise PushError(f"--repo {repo!r}: give USER/NAME (or ORGANIZATION/NAME)")
    folder, report = read_run(run)
    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: run `hf auth login`, or set HF_TOKEN")
    model = load_model(resolve_checkpoint_path(folder))
    card = model_card(folder, fmt, license=license, repo=repo, model=model)
    with tempfile.TemporaryDirectory(prefix="vitrain-push-") as tmp:
        try:
            staged, _ = export_folder(model, fmt, Path(tmp) / "export", card=card, log=log, source=folder.name)
        except FolderExportError as err:
            raise PushError(f"--format {fmt}: {err}") from None
        api = HfApi(token=token)
        url = api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        accuracy = report["test"]["accuracy"]
        api.upload_folder(
            folder_path=str(staged),
            repo_id=repo,
            repo_type="model",
            commit_message=f"vitrain export ({fmt}) of {folder.name}: {report['test'].get('split', 'test')} "
            f"accuracy {accuracy:.4f}",
            delete_patterns=["*.json", "*.safetensors", "README.md"],  # an earlier push's, of the other format
        )
    log(f"uploaded {folder.name} ({fmt} export and model card) to {url}")
    return str(url)
