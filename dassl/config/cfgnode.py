"""yacs ``CfgNode`` with the same merge semantics and more helpful errors.

Merging follows yacs 0.1.8 exactly (strings go through ``ast.literal_eval``,
types must match the default, list<->tuple are converted, ``None`` is accepted
on either side). The only differences: every error names the offending key and
suggests the closest valid one, a frozen node refuses ``merge_from_list`` too,
and a YAML file that is missing or not a mapping gets a clear message.
"""
import copy
import difflib
import os

import yaml
from yacs.config import CfgNode as _YacsCfgNode

_VALID_TYPES = {tuple, list, str, int, float, bool, type(None)}


class ConfigKeyError(KeyError, AssertionError):
    """Unknown config key. A ``KeyError`` (yacs' YAML error) and an
    ``AssertionError`` (yacs' ``merge_from_list`` error) at the same time."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class ConfigTypeError(ValueError):
    """A value whose type does not match the default's type."""


class ConfigListError(AssertionError, ValueError):
    """A malformed ``KEY VALUE`` override list."""


def _leaf_and_node_keys(node, prefix="", want_node=None):
    """Full key paths under ``node``; only nodes (or only leaves) if ``want_node`` is set."""
    keys = []
    for key, value in node.items():
        full = prefix + key
        is_node = isinstance(value, dict)
        if want_node is None or want_node == is_node:
            keys.append(full)
        if is_node:
            keys.extend(_leaf_and_node_keys(value, full + ".", want_node))
    return keys


def _suggestion(root, full_key, want_node=None):
    """'; did you mean X?' for the closest existing key of the same kind (a node
    for a YAML mapping, a leaf for a value), or an empty string."""
    candidates = _leaf_and_node_keys(root, want_node=want_node)
    close = difflib.get_close_matches(full_key, candidates, n=1, cutoff=0.6)
    if not close:
        # Compare the last component among the keys under the same parent.
        parent, _, last = full_key.rpartition(".")
        siblings = [c for c in candidates if c.rpartition(".")[0] == parent]
        by_last = difflib.get_close_matches(
            last, [s.rpartition(".")[2] for s in siblings], n=1, cutoff=0.5
        )
        if by_last:
            close = [(parent + "." if parent else "") + by_last[0]]
    if close:
        return f"; did you mean {close[0]}?"
    return ""


def _type_hint(original, replacement):
    if isinstance(original, float) and isinstance(replacement, int) and not isinstance(replacement, bool):
        return f"; write it as a float, e.g. {float(replacement)!r}"
    if isinstance(original, bool):
        return "; write True or False"
    if isinstance(original, (list, tuple)):
        return "; write a list, e.g. ['a', 'b'] or (1, 2)"
    return f"; give a value of type {type(original).__name__}"


def _coerce(replacement, original, full_key):
    """yacs 0.1.8 type check, with a hint appended to the standard message."""
    original_type, replacement_type = type(original), type(replacement)
    if replacement_type == original_type:
        return replacement
    if isinstance(original, _YacsCfgNode) and isinstance(replacement, _YacsCfgNode):
        return replacement  # plugins may add plain yacs nodes (``from yacs.config import CfgNode``)
    if (replacement_type is type(None) and original_type in _VALID_TYPES) or (
        original_type is type(None) and replacement_type in _VALID_TYPES
    ):
        return replacement
    for from_type, to_type in ((tuple, list), (list, tuple)):
        if replacement_type == from_type and original_type == to_type:
            return to_type(replacement)
    raise ConfigTypeError(
        "Type mismatch ({} vs. {}) with values ({} vs. {}) for config key: {}{}".format(
            original_type, replacement_type, original, replacement, full_key,
            _type_hint(original, replacement),
        )
    )


class CfgNode(_YacsCfgNode):
    """Config tree node; see the module docstring."""

    # ---- merging -----------------------------------------------------------
    def merge_from_file(self, cfg_filename):
        if not os.path.isfile(cfg_filename):
            raise FileNotFoundError(
                f'Config file not found: "{cfg_filename}". Check the path given to '
                "--config-file / --dataset-config-file (relative paths start at the "
                "current directory)."
            )
        with open(cfg_filename, "r") as f:
            try:
                loaded = yaml.safe_load(f)
            except yaml.YAMLError as exc:
                raise ValueError(f'Config file "{cfg_filename}" is not valid YAML: {exc}') from exc
        if loaded is None:
            return  # an empty file changes nothing
        if not isinstance(loaded, dict):
            raise ValueError(
                f'Config file "{cfg_filename}" must hold a mapping of KEY: value pairs, '
                f"but its top level is a {type(loaded).__name__}."
            )
        self.merge_from_other_cfg(type(self)(loaded), _source=cfg_filename)

    def merge_from_other_cfg(self, cfg_other, _source=None):
        self._check_mutable("merge", "another config")
        _merge_a_into_b(cfg_other, self, self, [], _source)

    def merge_from_list(self, cfg_list):
        self._check_mutable("merge", "an override list")
        cfg_list = list(cfg_list)
        if len(cfg_list) % 2 != 0:
            raise ConfigListError(
                "Override list has odd length: {}; it must be a list of pairs "
                "(KEY VALUE KEY VALUE ...)".format(cfg_list)
            )
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            if self.key_is_deprecated(full_key):
                continue
            if self.key_is_renamed(full_key):
                self.raise_key_rename_error(full_key)
            node = self
            key_list = full_key.split(".")
            for subkey in key_list:
                if not isinstance(node, dict) or subkey not in node:
                    raise ConfigKeyError(
                        "Non-existent key: {}{}. Override only keys that exist in the defaults "
                        "or are declared by the trainer's extend_cfg().".format(
                            full_key, _suggestion(self, full_key, want_node=False)
                        )
                    )
                parent, node = node, node[subkey]
            value = _coerce(self._decode_cfg_value(raw), node, full_key)
            dict.__setitem__(parent, key_list[-1], value)

    # ---- helpers -------------------------------------------------------------
    def _check_mutable(self, what, source):
        if self.is_frozen():
            raise AttributeError(
                f"Cannot merge {source} into the config: CfgNode is immutable (frozen). "
                "Merge files and overrides before calling freeze()."
            )


def _merge_a_into_b(a, b, root, key_list, source):
    """yacs' recursive merge; errors name the key, the file and a close match."""
    where = f' (in "{source}")' if source else ""
    for key, raw in a.items():
        full_key = ".".join(key_list + [key])
        value = b._decode_cfg_value(copy.deepcopy(raw))
        if key in b:
            value = _coerce(value, b[key], full_key)
            if isinstance(value, _YacsCfgNode):
                _merge_a_into_b(value, b[key], root, key_list + [key], source)
            else:
                dict.__setitem__(b, key, value)
        elif b.is_new_allowed():
            dict.__setitem__(b, key, value)
        elif root.key_is_deprecated(full_key):
            continue
        elif root.key_is_renamed(full_key):
            root.raise_key_rename_error(full_key)
        else:
            raise ConfigKeyError(
                "Non-existent config key: {}{}{}. Every key must exist in the defaults or be "
                "declared by the trainer's extend_cfg() before a YAML file is merged.".format(
                    full_key, where, _suggestion(root, full_key, want_node=isinstance(value, dict))
                )
            )
