"""Real English text, a WordPiece vocabulary and MLM examples for the demo."""
