"""Top-k accuracy in percent."""


def compute_accuracy(output, target, topk=(1,)):
    """Return one single-element tensor per k: the top-k accuracy in percent.

    ``output`` is ``[batch, num_classes]`` (or a tuple/list whose first item is);
    ``target`` holds the class indices.
    """
    if isinstance(output, (tuple, list)):
        output = output[0]
    maxk = max(topk)
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    res = []
    for k in topk:
        correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res
