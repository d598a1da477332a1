"""TraDo-8B TraceRL with the reference hyper-parameters (docs/algorithms.md §11.2), for accelerators."""

from configs import trado_4b


def get_config():
    c = trado_4b.get_config()
    c.workdir = "runs/trado_8b"
    c.model.init = "/path/to/TraDo-8B-Instruct"
    c.tokenizer = "/path/to/TraDo-8B-Instruct"
    return c
