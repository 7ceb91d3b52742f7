"""UCF101: ucf101/UCF-101-midframes/<Action_Words>/<video>.jpg + ucfTrainTestlist/*.txt."""
import os
import re

from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.datasets.base_dataset import Datum

from .benchmark import BenchmarkDataset
from .splits import split_trainval

LIST_DIR = "ucfTrainTestlist"


def split_camel_case(action):
    """'ApplyEyeMakeup' -> 'Apply_Eye_Makeup' (the folder and class name of the mid-frames)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


@DATASET_REGISTRY.register()
class UCF101(BenchmarkDataset):
    config_name = "ucf101"
    folder = "ucf101"
    image_subdir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    creation_inputs = ("UCF-101-midframes", f"{LIST_DIR}/classInd.txt",
                       f"{LIST_DIR}/trainlist01.txt", f"{LIST_DIR}/testlist01.txt")
    published = dict(classes=101, train=7639, val=1898, test=3783)

    def create_split(self):
        label_by_action = {}
        for line in self.read_lines(f"{LIST_DIR}/classInd.txt"):
            class_id, action = line.split(" ")
            label_by_action[action] = int(class_id) - 1
        trainval = self.read_list(f"{LIST_DIR}/trainlist01.txt", label_by_action)
        test = self.read_list(f"{LIST_DIR}/testlist01.txt", label_by_action)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_list(self, relpath, label_by_action):
        """Entries '<Action>/<video>.avi [label]' map to '<Action_Words>/<video>.jpg'."""
        items = []
        for line in self.read_lines(relpath):
            action, video = line.split(" ")[0].split("/")
            classname = split_camel_case(action)
            impath = os.path.join(self.image_dir, classname, video.replace(".avi", ".jpg"))
            items.append(Datum(impath, label_by_action[action], 0, classname))
        return items
