"""TensorFlow Serving: the serving graph, the model base layout, warm-up requests."""
