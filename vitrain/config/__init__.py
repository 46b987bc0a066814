"""The options of ``vitrain train`` and ``vitrain pretrain``, each declared once, and their YAML files.

``option.py`` says how an option is declared (:func:`option`) and checked; ``train.py`` declares
them all (:class:`TrainConfig`); ``files.py`` reads them from YAML files and dicts.
"""

from ..errors import ConfigError
from .checks import parse_head
from .files import comma_list, config_from_dict, layered_config, load_config_file
from .option import Option, option, options, validate
from .train import FIRST_STAGE, SCHEDULES, TrainConfig

__all__ = [
    "FIRST_STAGE",
    "SCHEDULES",
    "ConfigError",
    "Option",
    "TrainConfig",
    "comma_list",
    "config_from_dict",
    "layered_config",
    "load_config_file",
    "option",
    "options",
    "parse_head",
    "validate",
]
