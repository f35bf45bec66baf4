"""What aider says to the scripted model server with ``--no-stream``: OpenAI chat
completions, answered by ``wire_chat``'s non-streamed form, one JSON object per request.

Aider has no tools: with ``--edit-format whole`` an edit is the reply's text itself, the
file's path on a line of its own and then a fenced block holding the whole new file
(``whole_file``). Every reply says what it spent (``usage``), so that aider prints its
``Tokens:`` line (and ``Cost:``, for a model with a price) from the server's figures.
"""

from __future__ import annotations

from wire_chat import ChatCompletions

PROMPT_TOKENS = 2345
COMPLETION_TOKENS = 67


def whole_file(path: str, content: str, *, before: str = "", after: str = "") -> str:
    """A reply editing ``path`` in aider's "whole" format, with text around it."""
    body = content if content.endswith("\n") else content + "\n"
    parts = [before, f"{path}\n```\n{body}```", after]
    return "\n\n".join(p for p in parts if p)


def chat_completions(model: str) -> ChatCompletions:
    """The dialect for aider: every request takes the next turn (aider offers no tools,
    so none is to be taken for a title request) and each reply names ``model``, the
    model aider asks for."""
    return ChatCompletions(tokens_in=PROMPT_TOKENS, tokens_out=COMPLETION_TOKENS,
                           side=lambda body: False, model=model)
