package importer

func (t *translator) npep(doc *document) {}
