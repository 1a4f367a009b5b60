"""Data: the paper's tasks and the offline demo task, tokenisation, fixed-shape batches."""
from unified_petl.data.batching import (BatchStream, Encoded, Ragged, batches, encode,
                                        eval_batches, host_slice, make_buckets,
                                        token_budget_batches)
from unified_petl.data.demo import demo_task
from unified_petl.data.tasks import TASKS, Task, get_task, load_task

__all__ = ["BatchStream", "Encoded", "Ragged", "batches", "encode", "eval_batches",
           "host_slice", "make_buckets", "token_budget_batches", "demo_task", "TASKS", "Task",
           "get_task", "load_task"]
