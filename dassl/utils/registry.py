"""Name -> object registries (trainers, datasets, evaluators)."""
from .tools import PLUGIN_PACKAGE_HINT, closest_match

__all__ = ["Registry", "RegistryKeyError"]


class RegistryKeyError(KeyError):
    """A ``KeyError`` whose message prints without quotes and escapes."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class Registry:
    """A dict of registered objects keyed by name (a class's ``__name__`` when
    used as a decorator).

    >>> TRAINER_REGISTRY = Registry("TRAINER")
    >>> @TRAINER_REGISTRY.register()
    ... class MyTrainer: ...
    """

    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def _do_register(self, name, obj, force=False):
        if name in self._obj_map and not force:
            raise KeyError(
                'An object named "{}" was already registered in "{}" registry'.format(
                    name, self._name
                )
            )
        self._obj_map[name] = obj

    def register(self, obj=None, force=False):
        if obj is None:
            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name):
        if name not in self._obj_map:
            suggestion = closest_match(name, self._obj_map)
            guess = " (did you mean \"{}\"?)".format(suggestion) if suggestion else ""
            raise RegistryKeyError(
                'Object name "{}" does not exist in "{}" registry{}. Registered: {}. {}'.format(
                    name, self._name, guess, self.registered_names(), PLUGIN_PACKAGE_HINT
                )
            )
        return self._obj_map[name]

    def registered_names(self):
        return list(self._obj_map.keys())

    def __contains__(self, name):
        return name in self._obj_map

    def __repr__(self):
        return f"Registry({self._name!r}, {self.registered_names()})"
