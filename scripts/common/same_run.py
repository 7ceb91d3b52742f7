"""Is the finished run in an output folder the run a script is about to skip? (stdlib only, fast)

    python3 same_run.py RESULTS_JSON trainer=T seed=S config=C [data_root=DIR] -- [KEY VALUE ...]

The KEY VALUE pairs are the command's config overrides; DATASET.NUM_SHOTS, .SUBSAMPLE_CLASSES and
.TAG among them are compared too (the last value given wins, as in yacs), and so is every other
override against the settings the run recorded (OPTIM.LR 0.5 is not the finished run at 0.002).
Exit 0 when every recorded field agrees, 2 with one message naming the differences otherwise. A
results.json without an identity (written by an older version) is accepted.
"""
import ast
import json
import os
import sys

OVERRIDES = {"DATASET.NUM_SHOTS": ("num_shots", int), "DATASET.SUBSAMPLE_CLASSES": ("subsample", str),
             "DATASET.TAG": ("tag", str), "SEED": ("seed", int)}


def expected_identity(args):
    """(identity fields, {config key: value} of the other overrides) that the command would record."""
    split = args.index("--") if "--" in args else len(args)
    fixed, pairs = args[:split], args[split + 1:]
    expected, settings = {}, {}
    for item in fixed:
        key, value = item.split("=", 1)
        expected[key] = int(value) if key == "seed" else value
    for key, value in zip(pairs[::2], pairs[1::2]):
        if key in OVERRIDES:
            field, cast = OVERRIDES[key]
            expected[field] = cast(value.strip("'\""))
        else:
            settings[key] = config_value(value)
    return expected, settings


def config_value(text):
    """A command-line override as yacs reads it: a Python literal if it is one, else the text."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return list(value) if isinstance(value, tuple) else value


def same(key, recorded, value):
    if key == "data_root":  # one folder, however its path is spelt
        return os.path.realpath(recorded) == os.path.realpath(value)
    return recorded == value


def main(argv):
    path, args = argv[0], argv[1:]
    with open(path) as f:
        recorded = json.load(f).get("identity") or {}
    expected, settings = expected_identity(args)
    differences = [f"{key}: {recorded[key]!r} there, {value!r} here" for key, value in expected.items()
                   if recorded.get(key) is not None and not same(key, recorded[key], value)]
    ran = recorded.get("settings") or {}  # keys that do not change the numbers are not recorded
    differences += [f"{key}: {ran[key]!r} there, {value!r} here" for key, value in settings.items()
                    if key in ran and ran[key] != value]
    if differences:
        hint = ""
        if "data_root" in {difference.split(":")[0] for difference in differences}:
            hint = (" Two own datasets in folders of the same name need names of their own: set "
                    "TAG=NAME for this one.")
        print(f"{path} records a run with other settings ({'; '.join(differences)}): it is not the "
              "run this script would make, so it is neither skipped nor overwritten. Use another "
              f"OUTPUT, or delete that folder if its run is no longer needed.{hint}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
