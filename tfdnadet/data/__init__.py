"""Reading image folders and manifests, decoding, and tf.data pipelines."""
