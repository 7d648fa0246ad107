#!/usr/bin/env python3
"""Renders a conversation with a model folder's chat template the way the
Hugging Face ecosystem does, so the Rust tests can compare forja's rendering and
token ids with it.

  python scripts/checks/chat-template-check.py MODEL_DIR MESSAGES_JSON OUT_JSON

MODEL_DIR      folder with tokenizer.json and tokenizer_config.json (chat_template)
MESSAGES_JSON  a JSON list of {"role", "content"}
OUT_JSON       gets {"text": the rendered conversation, "prompt": the rendering
               of all but the last message with add_generation_prompt=True,
               "ids": token ids of the rendered conversation, "eos_token": the
               tokenizer's eos token}

Loads the tokenizer with transformers.AutoTokenizer (offline). Any error: a
message on stderr and exit status 1.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(1)
    model_dir, messages_path, out_path = sys.argv[1:]
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        with open(messages_path, encoding="utf-8") as f:
            messages = json.load(f)
        text = tok.apply_chat_template(messages, tokenize=False)
        prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        result = {"text": text, "prompt": prompt, "ids": ids, "eos_token": tok.eos_token}
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(result, f)
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        print(f"chat-template-check: {model_dir}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
