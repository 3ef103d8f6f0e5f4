"""From dataset rows to prompts: loading datasets, chat conversations, templates."""
