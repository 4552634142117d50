"""Functions the task yamls in this folder name with `!function utils.<name>` (lm-eval loads this file by path)."""

from rad_megatron.eval import data, scorers


def load_gsm8k(**metadata):
    return data.load("gsm8k", metadata.get("gsm8k_data"))


def load_cruxeval(**metadata):
    return data.load("cruxeval", metadata.get("cruxeval_data"))


def process_gsm8k(doc, results):
    response = results[0]
    return {"exact_match": float(scorers.gsm8k_correct(response, doc["answer"])),
            "strict_match": float(scorers.gsm8k_correct(response, doc["answer"], strict=True))}


def process_cruxeval(doc, results):
    return {"pass@1": float(scorers.crux_correct(doc["code"], doc["input"], results[0]))}
