"""The Flan data pipeline: tasks, formats, mixtures, tokenizers, packing, pretraining data.

- `registry` / `templates`: tasks (name, sub-mixture, example source, templates) and the
  Flan formats zs_opt, zs_noopt, fs_opt, fs_noopt, cot_zs, cot_fs.
- `suite`: the built-in synthetic suite of 1,836 tasks (the default, no download).
- `flan`: Flan 2022 collection JSONL exports as a task source.
- `mixtures`: the task-count ladder and examples-proportional mixing with caps.
- `tokenizer`, `packing`, `pipeline.make_batches`: packed batches for either model family.
- `pretrain`: T5 span corruption over a local corpus, in the same batch format.
"""
