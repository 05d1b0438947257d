from tfdnadet.wording import counted


def test_counted_puts_the_noun_in_the_right_number():
    assert counted(1, "epoch") == "1 epoch"
    assert counted(2, "epoch") == "2 epochs"
    assert counted(0, "unusable image file") == "0 unusable image files"
