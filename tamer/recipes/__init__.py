"""Training recipes: datasets, prompts and labels for each task tamer can fine-tune on."""
