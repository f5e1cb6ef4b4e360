"""Chat templates: a conversation (a list of {"role", "content"} messages) -> the text and token ids a model expects.

    tpl = chat_template_for("llama")                      # or a tokenizer / a model / "qwen3" / "gemma3" / "gpt2"
    ids = tpl.encode(tok, [{"role": "user", "content": "Hi"}])     # ends with the assistant's header
    text = tpl.render(messages)                           # the same conversation as one string, for display
    out = generate(model, ids, ..., eos_id=tpl.stop_ids_for(tok))

Message contents are always encoded as plain text: a message containing "<|eot_id|>" or "<|endoftext|>" gives the
bytes of that text, never the control token. Only the template's own markers become special ids. Between two
markers, template text and contents are joined and encoded as one string, so the ids equal those of the rendered
text tokenized with the markers allowed (what Hugging Face's ``apply_chat_template`` gives) whenever the contents
contain no marker text.

Templates (roles "system", "user", "assistant"):

- ``llama3``: ``<|begin_of_text|>`` then per message ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``
  (content stripped); generation prompt ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``.
- ``chatml`` (Qwen): ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; generation prompt ``<|im_start|>assistant\\n``.
- ``gemma``: ``<bos>`` then ``<start_of_turn>{user|model}\\n{content}<end_of_turn>\\n`` (content stripped; a system
  message is put before the first user message's content, separated by a blank line); generation prompt
  ``<start_of_turn>model\\n``.
- ``alpaca`` (GPT-2 family; the book's chapter 7 format): the preamble (or the system message), then
  ``\\n\\n### Instruction:\\n{user}`` and ``\\n\\n### Response:\\n{assistant}<|endoftext|>``; generation prompt
  ``\\n\\n### Response:\\n``. Its markers are plain text; only the end-of-text token is special.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["ChatTemplate", "chat_template_for", "TEMPLATES", "ALPACA_PREAMBLE", "ALPACA_INSTRUCTION",
           "ALPACA_RESPONSE"]

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_INSTRUCTION = "\n\n### Instruction:\n"
ALPACA_RESPONSE = "\n\n### Response:\n"

ROLES = ("system", "user", "assistant")
Piece = tuple[str, bool, bool]          # (text, is_special_marker, is_assistant_output)


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format. ``style`` picks the layout (``llama3``, ``chatml``, ``gemma``, ``alpaca``); ``stop_tokens``
    are the special tokens that end an assistant turn (those the tokenizer has become ``stop_ids_for(tok)``)."""

    name: str
    style: str
    stop_tokens: tuple[str, ...]
    eos_token: str = "<|endoftext|>"      # alpaca: the token closing an assistant turn
    tokenizer: Any = None                  # set by ``bind``; then ``stop_ids`` is known

    # --------------------------------------------------------------------------------------------- layout
    def _pieces(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> list[Piece]:
        msgs = _check_messages(messages)
        out: list[Piece] = []

        def text(s: str, output: bool = False) -> None:
            out.append((s, False, output))

        def mark(s: str, output: bool = False) -> None:
            out.append((s, True, output))

        if self.style == "llama3":
            mark("<|begin_of_text|>")
            for role, content in msgs:
                mark("<|start_header_id|>"), text(role), mark("<|end_header_id|>"), text("\n\n")
                text(content.strip(), role == "assistant"), mark("<|eot_id|>", role == "assistant")
            if add_generation_prompt:
                mark("<|start_header_id|>"), text("assistant"), mark("<|end_header_id|>"), text("\n\n")
        elif self.style == "chatml":
            for role, content in msgs:
                mark("<|im_start|>"), text(f"{role}\n")
                text(content, role == "assistant"), mark("<|im_end|>", role == "assistant"), text("\n")
            if add_generation_prompt:
                mark("<|im_start|>"), text("assistant\n")
        elif self.style == "gemma":
            mark("<bos>")
            system = None
            for role, content in msgs:
                if role == "system":
                    system = content.strip()
                    continue
                if system is not None and role == "user":
                    content, system = f"{system}\n\n{content.strip()}", None
                mark("<start_of_turn>"), text("model\n" if role == "assistant" else "user\n")
                text(content.strip(), role == "assistant"), mark("<end_of_turn>", role == "assistant"), text("\n")
            if add_generation_prompt:
                mark("<start_of_turn>"), text("model\n")
        elif self.style == "alpaca":
            preamble = next((c for r, c in msgs if r == "system"), ALPACA_PREAMBLE)
            text(preamble)
            for role, content in msgs:
                if role == "user":
                    text(ALPACA_INSTRUCTION + content)
                elif role == "assistant":
                    text(ALPACA_RESPONSE), text(content, True), mark(self.eos_token, True)
            if add_generation_prompt:
                text(ALPACA_RESPONSE)
        else:
            raise ValueError(f"ChatTemplate {self.name!r}: unknown style {self.style!r}")
        return out

    # ----------------------------------------------------------------------------------------------- API
    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as one string (markers spelled out), for display and for other tools."""
        return "".join(s for s, _, _ in self._pieces(messages, add_generation_prompt))

    def encode(self, tokenizer, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
               ) -> list[int]:
        """Token ids of the conversation: contents as plain text, the template's markers as special ids."""
        return self.encode_with_mask(tokenizer, messages, add_generation_prompt)[0]

    def encode_with_mask(self, tokenizer, messages: Sequence[Mapping[str, str]],
                         add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
        """(ids, mask): mask[i] is True for the tokens of assistant contents and the markers closing them (the
        tokens a supervised or preference loss trains on); the prompt and the template text are False."""
        ids: list[int] = []
        mask: list[bool] = []
        pending: list[str] = []
        pending_output = False

        def flush() -> None:
            if pending:
                new = _encode_plain(tokenizer, "".join(pending))
                ids.extend(new), mask.extend([pending_output] * len(new))
                pending.clear()

        for s, special, output in self._pieces(messages, add_generation_prompt):
            if special:
                flush()
                tid = self._marker_id(tokenizer, s)
                if tid is not None:
                    ids.append(tid), mask.append(output)
            else:
                if output != pending_output:
                    flush()
                    pending_output = output
                if s:
                    pending.append(s)
        flush()
        return ids, mask

    def _marker_id(self, tokenizer, name: str) -> int | None:
        specials = getattr(tokenizer, "special_tokens", None) or {}
        if name in specials:
            return int(specials[name])
        if self.style == "alpaca":        # the end of a response: the tokenizer's own end-of-text, when it has one
            return getattr(tokenizer, "eos_id", None)
        raise ValueError(f"chat template {self.name!r} needs the special token {name!r}, which this tokenizer "
                         f"({type(tokenizer).__name__}, {len(specials)} special tokens) does not have; "
                         f"use chat_template_for(tokenizer) to pick the template that matches it")

    def stop_ids_for(self, tokenizer) -> list[int]:
        """Ids that end an assistant turn in ``tokenizer`` (the template's stop tokens it has, else its eos)."""
        specials = getattr(tokenizer, "special_tokens", None) or {}
        ids = [int(specials[t]) for t in self.stop_tokens if t in specials]
        eos = getattr(tokenizer, "eos_id", None)
        if eos is not None and eos not in ids:
            ids.append(int(eos))
        return ids

    @property
    def stop_ids(self) -> list[int]:
        """``stop_ids_for`` the bound tokenizer (``chat_template_for(tokenizer)`` or ``bind`` sets it)."""
        if self.tokenizer is None:
            raise ValueError(f"chat template {self.name!r} is not bound to a tokenizer: use "
                             "chat_template_for(tokenizer), template.bind(tokenizer) or stop_ids_for(tokenizer)")
        return self.stop_ids_for(self.tokenizer)

    @property
    def jinja(self) -> str:
        """The same template in Jinja, as ``tokenizer_config.json``'s ``chat_template`` (transformers'
        ``apply_chat_template`` renders it to exactly ``render``'s text)."""
        return _JINJA[self.style]

    def bind(self, tokenizer) -> "ChatTemplate":
        """This template with ``tokenizer`` attached (for ``stop_ids``)."""
        return ChatTemplate(self.name, self.style, self.stop_tokens, self.eos_token, tokenizer)


_JINJA = {
    "llama3": ("{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
               "'<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    "chatml": ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "gemma": ("{{ '<bos>' }}{% set ns = namespace(system=none) %}{% for m in messages %}"
              "{% if m['role'] == 'system' %}{% set ns.system = m['content'] | trim %}{% else %}"
              "{% set content = m['content'] | trim %}{% if m['role'] == 'user' and ns.system is not none %}"
              "{% set content = (ns.system + '\n\n' + content) | trim %}{% set ns.system = none %}{% endif %}"
              "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' + content + "
              "'<end_of_turn>\n' }}{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"),
    "alpaca": ("{% set ns = namespace(pre=none) %}{% for m in messages %}{% if m['role'] == 'system' and ns.pre is "
               "none %}{% set ns.pre = m['content'] %}{% endif %}{% endfor %}{{ '" + ALPACA_PREAMBLE + "' if ns.pre is "
               "none else ns.pre }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '\n\n### Instruction:\n' + "
               "m['content'] }}{% elif m['role'] == 'assistant' %}{{ '\n\n### Response:\n' + m['content'] + "
               "'<|endoftext|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '\n\n### Response:\n' }}"
               "{% endif %}"),
}

TEMPLATES: dict[str, ChatTemplate] = {
    "llama3": ChatTemplate("llama3", "llama3", ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")),
    "chatml": ChatTemplate("chatml", "chatml", ("<|im_end|>", "<|endoftext|>")),
    "gemma": ChatTemplate("gemma", "gemma", ("<end_of_turn>", "<eos>")),
    "alpaca": ChatTemplate("alpaca", "alpaca", ("<|endoftext|>",)),
}
# model family (GPTConfig.family, Hugging Face model_type) -> template name
_FAMILY = {"llama": "llama3", "llama3": "llama3", "qwen": "chatml", "qwen2": "chatml", "qwen3": "chatml",
           "qwen3_moe": "chatml", "gemma": "gemma", "gemma3": "gemma", "gemma3_text": "gemma", "gpt2": "alpaca"}
# a special token a tokenizer has -> the template it was made for
_MARKERS = (("<|start_header_id|>", "llama3"), ("<|im_start|>", "chatml"), ("<start_of_turn>", "gemma"))


def chat_template_for(source, tokenizer=None) -> ChatTemplate:
    """The chat template of a model family name (``"llama"``, ``"qwen3"``, ``"gemma3"``, ``"gpt2"``, or a template
    name), of a tokenizer (recognised by its special tokens; otherwise Alpaca), or of a model (its
    ``config.family``). The result is bound to the tokenizer when one is given (as ``source`` or ``tokenizer``)."""
    if isinstance(source, str):
        key = source.lower()
        name = key if key in TEMPLATES else _FAMILY.get(key)
        if name is None:
            raise ValueError(f"chat_template_for: unknown model family or template {source!r}; known: "
                             f"{sorted(set(_FAMILY) | set(TEMPLATES))}")
    elif hasattr(source, "encode") and hasattr(source, "decode"):
        tokenizer = source
        specials = getattr(source, "special_tokens", None) or {}
        name = next((t for marker, t in _MARKERS if marker in specials), "alpaca")
    elif hasattr(source, "config") and hasattr(source.config, "family"):
        return chat_template_for(str(source.config.family), tokenizer)
    else:
        raise TypeError(f"chat_template_for expects a family name, a tokenizer or a model, got "
                        f"{type(source).__name__}")
    tpl = TEMPLATES[name]
    return tpl.bind(tokenizer) if tokenizer is not None else tpl


def _check_messages(messages) -> list[tuple[str, str]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"chat template: messages must be a list of {{'role', 'content'}} dicts, got "
                        f"{type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"chat template: message {i} must be a dict with 'role' and 'content', got {m!r}"[:200])
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ValueError(f"chat template: message {i} has role {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise TypeError(f"chat template: message {i} content must be a str, got {type(content).__name__}")
        out.append((role, content))
    return out


def _encode_plain(tokenizer, text: str) -> list[int]:
    """``text`` as ordinary text: special-token names in it are never recognised."""
    return list(tokenizer.encode(text))
