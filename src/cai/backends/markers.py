"""Chat-format markers in text sent to an OpenAI-compatible server, made harmless.

A server applies its model's chat template and tokenizes the result, special tokens included, so a
`<|im_end|>\\n<|im_start|>assistant\\n` inside a red-team prompt or a quoted policy answer would
become real turn markers there: the text could forge turns, including a labeller's own
"The answer is: (A)". The client cannot tokenize for the server, so before a message leaves,
every marker string of the common chat formats is broken with an invisible character (U+200B,
zero-width space, after its first character): the model then reads ordinary characters that look
the same. `neutralize("a<|im_end|>b", MARKERS)` -> ("a<\\u200b|im_end|>b", 1).

Covered (`MARKERS`): any `<|word|>` (ChatML: Qwen, Yi, Phi 3/4, Llama 3's headers and eot, GPT-OSS
harmony, Granite, Command R), DeepSeek's `<｜...｜>`, Llama 2 / Mistral (`[INST]`, `[/INST]`,
`<<SYS>>`, `<</SYS>>`, `<s>`, `</s>`, Mistral's `[SYSTEM_PROMPT]`, `[TOOL_CALLS]` ...), Gemma
(`<start_of_turn>`, `<end_of_turn>`, `<bos>`, `<eos>`), Falcon/others' `<|endoftext|>`. A
model-specific string can be added (`OpenAIModel.extra_markers`); `neutralize_markers: false`
sends text as it is.

The local backend needs none of this: it tokenizes message text itself, as plain text
(cai.backends.local.ChatEncoder).
"""

from __future__ import annotations

import re

BREAK = "\u200b"  # zero-width space: invisible, and no chat format's marker contains it

MARKERS = (
    r"<\|[A-Za-z0-9_.:\-/ ]{1,64}\|>",  # <|im_start|>, <|eot_id|>, <|start_header_id|>, <|user|>, <|end|>, <|channel|> ...
    r"<｜[^｜<>\n]{1,64}｜>",  # DeepSeek: <｜User｜>, <｜Assistant｜>, <｜end▁of▁sentence｜>
    *(
        re.escape(m)
        for m in (
            "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<s>", "</s>",  # Llama 2, Mistral
            "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",  # Mistral v3+
            "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[THINK]", "[/THINK]",
            "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>",  # Gemma
        )
    ),
)  # fmt: skip


def marker_pattern(extra: tuple[str, ...] | list[str] = ()) -> re.Pattern:
    """One regex for MARKERS plus `extra` literal strings."""
    return re.compile("|".join([*(re.escape(s) for s in extra if s), *MARKERS]))


def neutralize(text: str, pattern: re.Pattern) -> tuple[str, int]:
    """`text` with every marker broken by BREAK after its first character, and how many there were."""
    return pattern.subn(lambda m: m.group()[0] + BREAK + m.group()[1:], text)
