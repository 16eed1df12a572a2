package importer

func (t *translator) calico(docs []*document) {}
