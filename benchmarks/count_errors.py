"""How does the model count? Answers to count questions by truth and number of objects, and
where one first-layer head looks.

On count questions only (training split, an unused seed), with all visual tokens:

- the answers per truth, and per truth and number of objects in the scene: a model that
  counts answers the same whatever the other objects; one that estimates the share of
  the objects that have the asked colour answers 3 of 3 as it answers 4 of 4;
- the attention of one first-layer head (``--head``; head 0 is the one the target hint
  steers) at the colour word: its share on the word itself, on the counted objects'
  box-centre tokens and on all their tokens, per truth.

    .venv/bin/python benchmarks/count_errors.py --size 300 [--model DIR] [--head H]
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

import torch

from arr_coc.tasks.shapes_vqa import ShapesVQA
from arr_coc.training.data import processor_grid
from arr_coc.training.testbed import ExampleSet, answer_rows, initial_model
from arr_coc.vlm.decoding import pad_rows
from arr_coc.vlm.pruning import encoder_outputs
from arr_coc.vlm.testbed import EMBEDDED_MODEL


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300, help="count questions")
    parser.add_argument("--seed", type=int, default=7, help="training-split seed (unused by training)")
    parser.add_argument("--model", default=str(EMBEDDED_MODEL), help="VLM directory")
    parser.add_argument("--head", type=int, default=0, help="first-layer head whose attention is shown")
    args = parser.parse_args()
    vlm = initial_model("", 0, args.model)
    vlm.model.eval()
    dataset = ShapesVQA(args.size, "train", args.seed, processor_grid(vlm.processor), kinds=("count",))
    examples = ExampleSet(vlm.processor, dataset, vlm.tokenizer.convert_tokens_to_ids("<|im_end|>"), vlm.context_length)
    answers: dict[tuple[str, int], Counter] = defaultdict(Counter)
    shares: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    everything = torch.Generator()
    for index in range(len(dataset)):
        sample, scene = dataset.sample_and_scene(index)
        example = examples[index]
        rows, kept, _ = answer_rows(vlm, [example], [1.0], everything)
        prompt = rows[0].input_ids[: -example.answer_ids.numel()]
        batch = pad_rows(rows, vlm.pad_token_id, vlm.device)
        output = vlm.model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            mm_encoder_outputs=encoder_outputs(vlm, rows),
            use_cache=False,
            output_attentions=True,
        )
        answer = vlm.tokenizer.decode(int(output.logits[0, prompt.numel() - 1].argmax())).strip()
        answers[(sample.answer, len(scene.objects))][answer] += 1
        subject = int(torch.nonzero(prompt == example.subject_id).flatten()[-1])
        slots = torch.nonzero(prompt == vlm.image_token_id).flatten()
        row = output.attentions[0][0, args.head, subject]
        centres, targets = slots[example.counted.flatten()[kept[0]]], slots[example.target.flatten()[kept[0]]]
        shares[sample.answer].append((float(row[subject]), float(row[centres].sum()), float(row[targets].sum())))
    right = sum(c[t] for (t, _), c in answers.items())
    print(f"count questions: {len(dataset)}, right: {right / len(dataset):.3f}")
    print("truth  objects  answers")
    for (truth, objects), counter in sorted(answers.items()):
        print(f"{truth:>5}  {objects:>7}  {dict(sorted(counter.items()))}")
    print(f"truth  layer-1 head-{args.head} attention at the colour word: word / counted centres / counted objects")
    for truth, per_truth in sorted(shares.items()):
        means = [sum(r[k] for r in per_truth) / len(per_truth) for k in range(3)]
        print(f"{truth:>5}  {means[0]:.2f} / {means[1]:.2f} / {means[2]:.2f}")


if __name__ == "__main__":
    main()
