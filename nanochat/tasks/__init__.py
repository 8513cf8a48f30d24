"""Chat datasets and evaluations as Tasks.

    from nanochat.tasks import build_mixture, load_eval_task, TaskUnavailable
    mix = build_mixture("mid", "train")          # deterministic TaskMixture
    for line in mix.report_lines(): print(line)  # sources, substitutes and missing components

Every Task has: name, split, source, eval_type ("categorical"|"generative"), len(), task[i] ->
conversation, evaluate(conversation, completion_text) -> bool, describe(). Their data comes from
`nanochat.task_data` (one local layout, one fetcher).
"""
from nanochat.tasks.base import (LETTERS, ListTask, Task, TaskMixture, TaskUnavailable, categorical_correct,
                                 extract_final_number, last_assistant_text, multiple_choice_conversation,
                                 render_multiple_choice)
from nanochat.tasks.arc import ARC
from nanochat.tasks.chat import ChatText, SmolTalk
from nanochat.tasks.gsm8k import GSM8K, ArithmeticWordProblems, solution_parts
from nanochat.tasks.humaneval import HumanEval
from nanochat.tasks.identity import Identity
from nanochat.tasks.mmlu import MMLU, MultipleChoiceDrill
from nanochat.tasks.spelling import SimpleSpelling, SpellingBee
from nanochat.tasks.mixture import BASELINES, EVAL_TASKS, build_mixture, load_eval_task

__all__ = ["Task", "ListTask", "TaskMixture", "TaskUnavailable", "ARC", "ChatText", "SmolTalk", "GSM8K",
           "ArithmeticWordProblems", "HumanEval", "Identity", "MMLU", "MultipleChoiceDrill", "SimpleSpelling",
           "SpellingBee", "build_mixture", "load_eval_task", "EVAL_TASKS", "BASELINES", "LETTERS",
           "categorical_correct", "extract_final_number", "last_assistant_text", "multiple_choice_conversation",
           "render_multiple_choice", "solution_parts"]
