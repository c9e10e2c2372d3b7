"""The locally built tokenizer is one token per world word and identical in every process."""

import os
import subprocess
import sys

from adadiff.trainer.embedded.tokenizer import build_tokenizer, world_words

DUMP = ("from adadiff.trainer.embedded.tokenizer import build_tokenizer, world_words; "
        "print([build_tokenizer()(w).input_ids for w in world_words()])")


def test_every_world_word_is_one_token():
    tokenizer = build_tokenizer()
    assert all(len(tokenizer(word).input_ids) == 3 for word in world_words())


def test_token_ids_do_not_depend_on_the_process_hash_seed():
    dumps = {subprocess.run([sys.executable, "-c", DUMP], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(dumps) == 1
